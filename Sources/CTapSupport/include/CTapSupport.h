#ifndef CTAPSUPPORT_H
#define CTAPSUPPORT_H

#include <stddef.h>
#include <stdint.h>

/// 1 when this CPU can run tap_crc32_fold (x86-64 with PCLMULQDQ and SSE4.1), else 0.
int tap_crc32_fold_available(void);

/// Continues a reflected CRC-32 (IEEE polynomial) over `length` bytes, `length` a multiple of 16 and at least 64.
/// `state` is the running register (already inverted, as in the table-driven loop); returns the new register.
/// Only call it when tap_crc32_fold_available() returned 1.
uint32_t tap_crc32_fold(uint32_t state, const uint8_t *bytes, size_t length);

/// Returns freed heap memory to the system (glibc's malloc_trim); a no-op elsewhere. Returns 1 when memory was
/// released.
int tap_release_free_memory(void);

/// Opens an existing file for writing with O_DIRECT (no page cache): returns the descriptor, or -1 with errno set
/// (EINVAL where the file system does not support direct I/O, such as tmpfs).
int tap_open_direct_for_writing(const char *path);

#endif
