/* The test guest's whole userland: a static /init for a Linux kernel booted directly by QEMU.
 *
 * It prints what Paddock told it (SMBIOS OEM strings `paddock:KEY=VALUE`, type 11), then
 * rewrites `mib` MiB each round (one word per page, derived from page and round) and verifies
 * the whole buffer: a page lost or stale across a live migration shows as `BAD`. Everything goes
 * to the serial console, which the node keeps as the VM's log.
 *
 * Kernel command line: mib=N (default 64), ms=N (pause between rounds, default 0).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

static uint64_t h(uint64_t p, uint64_t r) {
    uint64_t x = p * 0x9E3779B97F4A7C15ULL ^ r;
    x ^= x >> 31;
    return x * 0xBF58476D1CE4E5B9ULL;
}

/* SMBIOS type 11 entry: 4-byte header, count, then NUL-terminated strings after `length`. */
static void print_oem_strings(void) {
    mkdir("/sys", 0555);
    if (mount("sysfs", "/sys", "sysfs", 0, 0) != 0) {
        printf("GUEST no sysfs\n");
        return;
    }
    FILE *f = fopen("/sys/firmware/dmi/entries/11-0/raw", "rb");
    if (!f) {
        printf("GUEST no oem strings\n");
        return;
    }
    unsigned char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    if (n < 5) return;
    size_t at = buf[1];
    while (at < n && buf[at]) {
        const char *s = (const char *)buf + at;
        if (strncmp(s, "paddock:", 8) == 0) printf("GUEST env %s\n", s + 8);
        at += strlen(s) + 1;
    }
}

int main(void) {
    size_t n = (getenv("mib") ? atoi(getenv("mib")) : 64) * 256UL;
    int ms = getenv("ms") ? atoi(getenv("ms")) : 0;
    print_oem_strings();
    volatile uint64_t *b = mmap(0, n * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (b == MAP_FAILED) {
        printf("GUEST cannot map %zu pages\n", n);
        return 1;
    }
    printf("GUEST READY\n");
    fflush(stdout);
    for (uint64_t r = 1;; r++) {
        for (size_t p = 0; p < n; p++) b[p * 512] = h(p, r);
        size_t bad = 0;
        for (size_t p = 0; p < n; p++) bad += b[p * 512] != h(p, r);
        printf("round %llu %s bad=%zu\n", (unsigned long long)r, bad ? "BAD" : "ok", bad);
        fflush(stdout);
        if (ms) usleep(ms * 1000);
    }
}
