/* Fault injection for tests: fsync and fdatasync fail with EIO while the file named by
 * $FERRIC_TEST_FAIL_FSYNC_FLAG exists. Loaded into ferricd with LD_PRELOAD; nothing else changes.
 * (A disk that fails under fsync cannot be started on demand without root and dm-flakey.) */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

static int failing(void) {
    const char *flag = getenv("FERRIC_TEST_FAIL_FSYNC_FLAG");
    return flag != NULL && access(flag, F_OK) == 0;
}

int fdatasync(int fd) {
    if (failing()) {
        errno = EIO;
        return -1;
    }
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}

int fsync(int fd) {
    if (failing()) {
        errno = EIO;
        return -1;
    }
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}
