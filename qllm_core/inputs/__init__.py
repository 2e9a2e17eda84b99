"""Inputs: documents (text, files), token ids and spans checked, and prompt layouts."""
