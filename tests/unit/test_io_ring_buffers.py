"""Where a receive completion's bytes are in io_uring's provided buffers (csrc/io_ring.h).

``xr_buf_data`` is pure bookkeeping over a buffer ring, so it is exercised here directly: a
small C program includes the header, fakes the ring's buffers, and feeds completions the
kernel could post, including ones it should never post (a foreign buffer id, more bytes
than a buffer holds). The server tests cover the same code with real kernel completions.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = r"""
#include <stdio.h>
#include "io_ring.h"

static int failures;
#define CHECK(cond) do { if (!(cond)) { printf("FAIL line %d: %s\n", __LINE__, #cond); \
                                        failures++; } } while (0)

int main(void)
{
    static uint8_t buffers[4 * 100];
    static uint32_t used[4];
    xr_ring r;
    int finished;
    const uint8_t *data;

    memset(&r, 0, sizeof(r));
    r.buffers = buffers;
    r.buf_count = 4;
    r.buf_size = 100;

    /* one buffer per receive */
    data = xr_buf_data(&r, 2, 60, 0, &finished);
    CHECK(data == buffers + 200 && finished == 1);
    data = xr_buf_data(&r, 2, 101, 0, &finished);
    CHECK(data == NULL);
    data = xr_buf_data(&r, 4, 10, 0, &finished);        /* not ours: never recycled */
    CHECK(data == NULL && finished == 0);

    /* incremental: receives side by side until the kernel is done with the buffer */
    r.buf_incremental = 1;
    r.buf_used = used;
    data = xr_buf_data(&r, 1, 30, XR_CQE_F_BUF_MORE, &finished);
    CHECK(data == buffers + 100 && finished == 0);
    data = xr_buf_data(&r, 1, 50, XR_CQE_F_BUF_MORE, &finished);
    CHECK(data == buffers + 130 && finished == 0);
    data = xr_buf_data(&r, 1, 20, 0, &finished);        /* the rest: used up */
    CHECK(data == buffers + 180 && finished == 1 && used[1] == 0);
    data = xr_buf_data(&r, 1, 10, XR_CQE_F_BUF_MORE, &finished);  /* recycled: from 0 */
    CHECK(data == buffers + 100 && finished == 0 && used[1] == 10);

    /* more bytes than the buffer has left: refused, and nothing after it is read past the
       buffer's end (the position does not wrap) until the kernel is done with it */
    data = xr_buf_data(&r, 3, 70, XR_CQE_F_BUF_MORE, &finished);
    CHECK(data == buffers + 300);
    data = xr_buf_data(&r, 3, 40, XR_CQE_F_BUF_MORE, &finished);
    CHECK(data == NULL && finished == 0);
    data = xr_buf_data(&r, 3, 5, XR_CQE_F_BUF_MORE, &finished);
    CHECK(data == NULL && finished == 0);
    data = xr_buf_data(&r, 3, 0, 0, &finished);
    CHECK(finished == 1 && used[3] == 0);
    data = xr_buf_data(&r, 3, 8, XR_CQE_F_BUF_MORE, &finished);
    CHECK(data == buffers + 300);
    data = xr_buf_data(&r, 9, 8, XR_CQE_F_BUF_MORE, &finished);
    CHECK(data == NULL && finished == 0);

    if (failures == 0)
        printf("ok\n");
    return failures != 0;
}
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_receive_buffer_positions(tmp_path: Path) -> None:
    source = tmp_path / "buffers.c"
    source.write_text(PROGRAM)
    binary = tmp_path / "buffers"
    subprocess.run(
        ["cc", "-std=gnu11", "-Wall", "-Werror", "-I", str(ROOT / "csrc"), "-o", str(binary),
         str(source)],
        check=True,
        timeout=120,
    )  # fmt: skip
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "ok", result.stdout
    assert result.returncode == 0
