// Giving freed memory back to the system after a burst: glibc keeps freed heap pages, and after large blocks are
// freed it raises its mmap threshold, so a process stays at its peak RSS unless asked to trim.
#include "CTapSupport.h"

#if defined(__GLIBC__)
#include <malloc.h>

int tap_release_free_memory(void) { return malloc_trim(0); }

#else

int tap_release_free_memory(void) { return 0; }

#endif
