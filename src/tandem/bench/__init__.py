"""`tandem bench`: measured speed beside the hardware's floors and a baseline, in one run."""
