//! Capturing the sysfs subset the model reads, for bug reports and test fixtures.
