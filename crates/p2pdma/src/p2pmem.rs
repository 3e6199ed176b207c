//! p2pmem providers and buffers: safe ownership of mmap()ed device memory.
