"""Issue 19: decoding in processes that may die. A bomb that passed the header (a higher budget, a
lying codestream) exhausts its own process's memory limit, not the node's; a dead decoder process is
replaced and its image tried again alone, so the images next to it keep their results and only the
culprit fails; health() says when no decoder can run. Decoder processes are killed for real (SIGKILL)."""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
import types

import pytest

from cxr_node.decoding.pixels import PixelDataError
from cxr_node.decoding.pool import (
    DecodeBudgetError,
    Decoded,
    DecodeLimits,
    DecodePool,
    DecoderDied,
    restart_delay_s,
)
from cxr_node.processing import OutcomeKind, classify
from tests import peers
from tests.bombs import j2k_bomb, rle_bomb

pytestmark = pytest.mark.slow  # decoder processes start in ~1-2 s each


def _save(ds, path):
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def pool():
    pools = []

    def make(**kw):
        p = DecodePool(kind="process", **kw)
        pools.append(p)
        return p

    yield make
    for p in pools:
        p.close()


def test_j2k_bomb_exhausts_its_decoder_alone(pool, tmp_path, rg1_uncr):
    # 8000^2 at 16 bits: 128 MB of pixels, > 1 GB to decode; the decoder may add 256 MiB.
    bomb = _save(j2k_bomb(8000, 8000), tmp_path / "bomb.dcm")
    p = pool(workers=2, limits=DecodeLimits(memory_mb=256))
    got = p.decode_many([rg1_uncr, bomb, rg1_uncr])
    assert isinstance(got[0], Decoded) and isinstance(got[2], Decoded)
    assert isinstance(got[1], PixelDataError), got[1]
    assert "\n" not in str(got[1])
    if isinstance(got[1], DecodeBudgetError):
        assert "decoding.memory_limit_mb 256" in str(got[1])
    assert isinstance(p.decode_many([rg1_uncr])[0], Decoded)  # and the pool goes on


def test_rle_bomb_fails_alone_whether_its_decoder_raises_or_aborts(pool, tmp_path, rg1_uncr):
    # The RLE plug-in (Rust) raises MemoryError when its output buffer does not fit and aborts the
    # process when a later allocation fails: either way only the bomb fails, and the images beside
    # it are decoded. An aborted process is replaced and the image tried again alone first.
    bomb = _save(rle_bomb(12000, 12000), tmp_path / "rle-bomb.dcm")  # 4.5 MB; 288 MB of output alone
    p = pool(workers=2, limits=DecodeLimits(memory_mb=256))
    got = p.decode_many([rg1_uncr, bomb, rg1_uncr, rg1_uncr])
    assert [type(g) for i, g in enumerate(got) if i != 1] == [Decoded] * 3, got
    assert isinstance(got[1], (DecodeBudgetError, DecoderDied)), got[1]
    assert "decoding.memory_limit_mb 256" in str(got[1])
    assert isinstance(p.decode_many([rg1_uncr])[0], Decoded)


def test_a_decoder_killed_mid_decode_is_replaced_and_the_image_decoded(pool, rg1_j2kr):
    p = pool(workers=1, limits=DecodeLimits(memory_mb=2048))
    p.warm_up()
    (first,) = p.pids()
    future = p.submit(rg1_j2kr)
    os.kill(first, signal.SIGKILL)  # an innocent image: its process died for another reason
    assert isinstance(future.result(timeout=120), Decoded)
    assert p.restarts == 1 and first not in p.pids()


def test_health_is_false_while_no_decoder_runs_and_true_again(pool, rg1_uncr):
    p = pool(workers=1, limits=DecodeLimits(memory_mb=2048))
    p.warm_up()
    assert p.health() is None
    seen = []
    for _ in range(2):  # the second crash in a row also waits restart_delay_s(2) before the restart
        (pid,) = p.pids()
        os.kill(pid, signal.SIGKILL)
        problem = peers.wait_until(p.health, 30, "health to report the dead decoder", interval_s=0.01)
        seen.append(problem)
        peers.wait_until(lambda: p.health() is None, 60, "a new decoder process", interval_s=0.05)
    assert all("killed by SIGKILL" in s and "no decoder process running" in s for s in seen), seen
    assert restart_delay_s(2) >= 1
    assert isinstance(p.decode_many([rg1_uncr])[0], Decoded)


def test_a_decode_over_the_time_limit_fails_that_image(pool, rg1_j2kr):
    p = pool(workers=1, limits=DecodeLimits(memory_mb=2048, timeout_s=0.05))  # J2K takes ~0.5 s here
    (got,) = p.decode_many([rg1_j2kr])
    assert isinstance(got, DecoderDied) and "decoding.timeout_s 0.05" in str(got), got


def test_memory_limit_is_set_in_the_decoder(pool, rg1_uncr):
    p = pool(workers=1, limits=DecodeLimits(memory_mb=300))
    p.warm_up()
    (pid,) = p.pids()
    limits = open(f"/proc/{pid}/limits").read()
    line = next(line for line in limits.splitlines() if line.startswith("Max address space"))
    soft = int(line.split()[3])
    size_kib = int(next(x for x in open(f"/proc/{pid}/status") if x.startswith("VmSize")).split()[1])
    assert 300 * 2**20 <= soft - size_kib * 1024 < 400 * 2**20  # ~300 MiB above what it maps now
    assert open(f"/proc/{pid}/oom_score_adj").read().strip() == "1000"


def test_closed_pool_refuses_work(pool, rg1_uncr):
    p = pool(workers=1)
    p.warm_up()
    pids = p.pids()
    p.close()
    time.sleep(0.1)
    assert not any(os.path.exists(f"/proc/{pid}") and _running(pid) for pid in pids)
    with pytest.raises(RuntimeError, match="closed"):
        p.submit(rg1_uncr)


def _running(pid: int) -> bool:
    state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def test_decoders_that_cannot_start_defer_the_images(pool, rg1_uncr):
    # The decode function lives in a module only this process has: every decoder process dies
    # while starting (it cannot unpickle its arguments). The image must not wait forever: after
    # STILLBORN_LIMIT such deaths in a row it fails as a resource problem, which the worker defers.
    phantom = types.ModuleType("cxr_phantom_decoder")

    def decode(path):
        raise AssertionError("never runs")

    decode.__module__, decode.__qualname__ = phantom.__name__, "decode"
    phantom.decode = decode
    sys.modules[phantom.__name__] = phantom
    try:
        p = pool(workers=1, decode=phantom.decode)
        exc = p.submit(rg1_uncr).exception(timeout=180)
    finally:
        del sys.modules[phantom.__name__]
    assert isinstance(exc, OSError) and exc.errno == errno.EAGAIN, exc
    assert "no decoder process starts" in str(exc)
    assert classify(exc) == OutcomeKind.RESOURCE
    assert "no decoder process running" in (p.health() or "")
