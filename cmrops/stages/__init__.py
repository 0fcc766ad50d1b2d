"""Pipeline stages.

Each module exposes ``run(params, ...)``: a plain, idempotent function over files.
"""
