"""Python's view of the status record a forward writes (csrc/status.h, the layout's source)."""

STATUS_INVALID_POSITION = 0   # flat position of the first invalid target, -1 if none
STATUS_INVALID_VALUE = 1
STATUS_INVALID_COUNT = 2
STATUS_NONFINITE_ROW = 3
STATUS_NONFINITE_CLASS = 4
STATUS_NONFINITE_COUNT = 5
STATUS_SIZE = 6
