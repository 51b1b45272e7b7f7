/* The test guest's whole userland: a static /init for a Linux kernel booted directly by QEMU.
 *
 * It prints what Paddock told it (SMBIOS OEM strings `paddock:KEY=VALUE`, type 11), then
 * rewrites `mib` MiB each round (one word per page, derived from page and round) and verifies
 * the whole buffer: a page lost or stale across a live migration shows as `BAD`. Everything goes
 * to the serial console, which the node keeps as the VM's log.
 *
 * Between rounds it reads what was typed on the console and prints each line back as
 * `GUEST typed LINE` (the interactive console's round trip).
 *
 * With ip4=A.B.C.D/N on the command line it loads the virtio NIC's modules (the files in /m, in name
 * order), gives eth0 that address and sends a datagram to the network's .1 every round, so the
 * host learns its MAC and address (libvirt's ARP source reports it as the VM's IP).
 *
 * Kernel command line: mib=N (default 64), ms=N (pause between rounds, default 0), ip4=ADDR/N.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
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

static int cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Loads the modules in /m in name order. */
static void load_modules(void) {
    DIR *d = opendir("/m");
    if (!d) return;
    char *names[32];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 32)
        if (e->d_name[0] != '.') names[n++] = strdup(e->d_name);
    closedir(d);
    qsort(names, n, sizeof *names, cmp);
    for (int i = 0; i < n; i++) {
        char path[300];
        snprintf(path, sizeof path, "/m/%s", names[i]);
        int fd = open(path, O_RDONLY);
        if (fd < 0 || syscall(SYS_finit_module, fd, "", 0) != 0) printf("GUEST cannot load %s: %s\n", names[i], strerror(errno));
        if (fd >= 0) close(fd);
    }
}

static int net_fd = -1;
static struct sockaddr_in gateway;

/* eth0 up with ip4=A.B.C.D/N; the gateway is the network's .1. */
static void setup_network(const char *spec) {
    char addr[32];
    int prefix = 24;
    if (sscanf(spec, "%31[0-9.]/%d", addr, &prefix) < 1) return;
    load_modules();
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "eth0");
    struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
    sin->sin_family = AF_INET;
    inet_pton(AF_INET, addr, &sin->sin_addr);
    uint32_t ip = ntohl(sin->sin_addr.s_addr);
    if (ioctl(s, SIOCSIFADDR, &ifr) != 0) { printf("GUEST no eth0\n"); close(s); return; }
    uint32_t mask = prefix ? 0xffffffffu << (32 - prefix) : 0;
    sin->sin_addr.s_addr = htonl(mask);
    ioctl(s, SIOCSIFNETMASK, &ifr);
    ioctl(s, SIOCGIFFLAGS, &ifr);
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    ioctl(s, SIOCSIFFLAGS, &ifr);
    gateway.sin_family = AF_INET;
    gateway.sin_port = htons(9);
    gateway.sin_addr.s_addr = htonl((ip & mask) | 1);
    net_fd = s;
    printf("GUEST ip %s/%d\n", addr, prefix);
}

static void hello_gateway(void) {
    if (net_fd >= 0) sendto(net_fd, "paddock", 7, MSG_DONTWAIT, (struct sockaddr *)&gateway, sizeof gateway);
}

/* Echoes complete lines typed on the console (stdin is non-blocking). */
static void echo_typed(void) {
    static char line[256];
    static size_t len;
    char c;
    while (read(0, &c, 1) == 1) {
        if (c == '\r' || c == '\n') {
            if (len) printf("GUEST typed %.*s\n", (int)len, line);
            len = 0;
        } else if (len < sizeof line) {
            line[len++] = c;
        }
    }
}

int main(void) {
    size_t n = (getenv("mib") ? atoi(getenv("mib")) : 64) * 256UL;
    int ms = getenv("ms") ? atoi(getenv("ms")) : 0;
    print_oem_strings();
    if (getenv("ip4")) setup_network(getenv("ip4"));
    volatile uint64_t *b = mmap(0, n * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (b == MAP_FAILED) {
        printf("GUEST cannot map %zu pages\n", n);
        return 1;
    }
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    printf("GUEST READY\n");
    fflush(stdout);
    for (uint64_t r = 1;; r++) {
        for (size_t p = 0; p < n; p++) b[p * 512] = h(p, r);
        size_t bad = 0;
        for (size_t p = 0; p < n; p++) bad += b[p * 512] != h(p, r);
        printf("round %llu %s bad=%zu\n", (unsigned long long)r, bad ? "BAD" : "ok", bad);
        echo_typed();
        hello_gateway();
        fflush(stdout);
        if (ms) usleep(ms * 1000);
    }
}
