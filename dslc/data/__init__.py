"""Training data for dslc: built-in offline data sets, generated tasks and user files.

`registry` describes each data set without loading it (torch-free, read by `dslc check`);
`sets` loads one into memory as tensors; `loader` cuts it into batches.
"""
