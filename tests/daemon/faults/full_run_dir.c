/* Fault injection for tests: a full tmpfs under the directory named by $FERRIC_TEST_FULL_DIR while the file
 * named by $FERRIC_TEST_FULL_FLAG exists. As on a full tmpfs, a file grown there with ftruncate has no page
 * behind its new size (a process touching it through a map gets SIGBUS), and reserving space with
 * posix_fallocate or fallocate fails with ENOSPC. Loaded into ferricd with LD_PRELOAD. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int full(int fd) {
    const char *flag = getenv("FERRIC_TEST_FULL_FLAG");
    const char *dir = getenv("FERRIC_TEST_FULL_DIR");
    if (flag == NULL || dir == NULL || access(flag, F_OK) != 0)
        return 0;
    char link[64], target[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n < 0)
        return 0;
    target[n] = '\0';
    size_t dir_len = strlen(dir);
    return strncmp(target, dir, dir_len) == 0 && target[dir_len] == '/';
}

/* Python's mmap refuses a length past the file's size, which a full tmpfs does report: so the file gets its
 * size, and loses it (its pages) only as it is mapped, which is what touching it then meets. Only the files
 * ferricd builds under temporary names (*.new) are mapped to be written. */
void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset) {
    void *(*real)(void *, size_t, int, int, int, off_t) =
        (void *(*)(void *, size_t, int, int, int, off_t))dlsym(RTLD_NEXT, "mmap");
    if (fd >= 0 && (prot & PROT_WRITE) && full(fd)) {
        char link[64], target[PATH_MAX];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n > 4 && strncmp(target + n - 4, ".new", 4) == 0) {
            int (*truncate_)(int, off_t) = (int (*)(int, off_t))dlsym(RTLD_NEXT, "ftruncate");
            truncate_(fd, 0);
        }
    }
    return real(addr, length, prot, flags, fd, offset);
}

void *mmap64(void *addr, size_t length, int prot, int flags, int fd, off_t offset) {
    return mmap(addr, length, prot, flags, fd, offset);
}

int posix_fallocate(int fd, off_t offset, off_t len) {
    if (full(fd))
        return ENOSPC;
    int (*real)(int, off_t, off_t) = (int (*)(int, off_t, off_t))dlsym(RTLD_NEXT, "posix_fallocate");
    return real(fd, offset, len);
}

int posix_fallocate64(int fd, off_t offset, off_t len) { return posix_fallocate(fd, offset, len); }

int fallocate(int fd, int mode, off_t offset, off_t len) {
    if (full(fd)) {
        errno = ENOSPC;
        return -1;
    }
    int (*real)(int, int, off_t, off_t) = (int (*)(int, int, off_t, off_t))dlsym(RTLD_NEXT, "fallocate");
    return real(fd, mode, offset, len);
}

int fallocate64(int fd, int mode, off_t offset, off_t len) { return fallocate(fd, mode, offset, len); }
