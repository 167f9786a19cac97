"""A CoAP responder in C that does no CoAP work beyond swapping the header: the trivial server
against which the load generator's and the NAT's ceilings are measured (bench/README.md)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

# A CoAP responder that does no CoAP work beyond swapping the header: recvmmsg, answer every
# CON request with a piggybacked 2.05 and 40 bytes (pings with RST), sendmmsg. It costs the
# backend as little as possible, so that the load generator can push the NAT harder.
RESPONDER_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#define BATCH 64
#define SIZE 2048
int main(int argc, char **argv)
{
    static unsigned char in[BATCH][SIZE], out[BATCH][SIZE];
    static struct sockaddr_storage addr[BATCH];
    struct mmsghdr rx[BATCH], tx[BATCH];
    struct iovec riov[BATCH], tiov[BATCH];
    struct sockaddr_in local;
    int fd = socket(AF_INET, SOCK_DGRAM, 0), size = 4 << 20;
    if (argc < 2 || fd < 0)
        return 2;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
    /* DF without path-MTU state: no per-destination IP ID to pick for each answer */
    int probe = IP_PMTUDISC_PROBE;
    setsockopt(fd, IPPROTO_IP, IP_MTU_DISCOVER, &probe, sizeof(probe));
    memset(&local, 0, sizeof(local));
    local.sin_family = AF_INET;
    local.sin_port = htons((unsigned short)atoi(argv[1]));
    local.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&local, sizeof(local)) < 0)
        return 1;
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            riov[i].iov_base = in[i];
            riov[i].iov_len = SIZE;
            memset(&rx[i].msg_hdr, 0, sizeof(rx[i].msg_hdr));
            rx[i].msg_hdr.msg_iov = &riov[i];
            rx[i].msg_hdr.msg_iovlen = 1;
            rx[i].msg_hdr.msg_name = &addr[i];
            rx[i].msg_hdr.msg_namelen = sizeof(addr[i]);
        }
        int n = recvmmsg(fd, rx, BATCH, MSG_WAITFORONE, NULL), m = 0;
        for (int i = 0; i < n; i++) {
            unsigned char *q = in[i], *r = out[m];
            unsigned len = rx[i].msg_len, tkl = q[0] & 15, length;
            if (len < 4 || (q[0] >> 6) != 1 || tkl > 8 || len < 4 + tkl || (q[0] & 0x30))
                continue;                               /* CON only */
            if (q[1] == 0) {                            /* ping: RST */
                r[0] = 0x70; r[1] = 0; r[2] = q[2]; r[3] = q[3];
                length = 4;
            } else if ((q[1] >> 5) == 0) {              /* request: ACK 2.05 + 40 bytes */
                r[0] = 0x60 | tkl; r[1] = 0x45; r[2] = q[2]; r[3] = q[3];
                memcpy(r + 4, q + 4, tkl);
                r[4 + tkl] = 0xFF;
                memset(r + 5 + tkl, 'x', 40);
                length = 45 + tkl;
            } else {
                continue;
            }
            tiov[m].iov_base = r;
            tiov[m].iov_len = length;
            memset(&tx[m].msg_hdr, 0, sizeof(tx[m].msg_hdr));
            tx[m].msg_hdr.msg_iov = &tiov[m];
            tx[m].msg_hdr.msg_iovlen = 1;
            tx[m].msg_hdr.msg_name = &addr[i];
            tx[m].msg_hdr.msg_namelen = rx[i].msg_hdr.msg_namelen;
            m++;
        }
        for (int sent = 0; sent < m;) {
            int k = sendmmsg(fd, tx + sent, m - sent, 0);
            if (k <= 0)
                break;
            sent += k;
        }
    }
}
"""


def build_responder(work: Path) -> Path | None:
    """Compile the responder into *work*; None without a C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    source = work / "responder.c"
    source.write_text(RESPONDER_C)
    binary = work / "responder"
    subprocess.run([compiler, "-O2", "-o", str(binary), str(source)], check=True, timeout=60)
    return binary
