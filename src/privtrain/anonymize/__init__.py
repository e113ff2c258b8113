"""Data-owner tool: policy, operators, k-anonymity, signed manifest.

Runs on the data owner's machine; raw personal data never leaves it.
"""
