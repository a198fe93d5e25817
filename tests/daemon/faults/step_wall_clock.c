/* Fault injection for tests: the wall clock (CLOCK_REALTIME) is stepped by the number of seconds written in
 * the file named by $FERRIC_TEST_CLOCK_STEP_FILE (negative: back), as an NTP step or an operator would, and
 * every fdatasync is logged as one line in the file named by $FERRIC_TEST_SYNC_LOG. The monotonic clock is
 * left alone. Loaded into ferricd with LD_PRELOAD; nothing else changes. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long step_s(void) {
    const char *path = getenv("FERRIC_TEST_CLOCK_STEP_FILE");
    long step = 0;
    FILE *f = path != NULL ? fopen(path, "r") : NULL;
    if (f != NULL) {
        if (fscanf(f, "%ld", &step) != 1)
            step = 0;
        fclose(f);
    }
    return step;
}

int clock_gettime(clockid_t clock, struct timespec *tp) {
    int (*real)(clockid_t, struct timespec *) =
        (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int result = real(clock, tp);
    if (result == 0 && clock == CLOCK_REALTIME)
        tp->tv_sec += step_s();
    return result;
}

int fdatasync(int fd) {
    const char *path = getenv("FERRIC_TEST_SYNC_LOG");
    if (path != NULL) {
        int log = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
        if (log >= 0) {
            (void)!write(log, "fdatasync\n", 10);
            close(log);
        }
    }
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}
