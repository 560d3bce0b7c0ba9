# cffi has no pyproject key for its build hook (python-cffi/cffi#55), so this file only names it.
from setuptools import setup

setup(cffi_modules=["build_ffi.py:ffibuilder"])
