// Opening a file for direct I/O: O_DIRECT needs _GNU_SOURCE, which Swift's Glibc module does not define.
#define _GNU_SOURCE
#include "CTapSupport.h"

#include <fcntl.h>

int tap_open_direct_for_writing(const char *path) {
#if defined(O_DIRECT)
    return open(path, O_WRONLY | O_DIRECT | O_CLOEXEC);
#else
    (void)path;
    return -1;
#endif
}
