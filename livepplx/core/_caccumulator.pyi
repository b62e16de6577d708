# The C accumulator (livepplx/core/_caccumulator.c): the same attributes and methods as its Python twin.
from .accumulator import PyAccumulator

class Accumulator(PyAccumulator): ...
