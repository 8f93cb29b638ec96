"""Two cached pipelines, each with its own transformer, generating in two threads at once (one
pipeline per device and one thread each is the usual serving layout) behave exactly as each
does alone, including while the other one compiles (issue 24, item 1).

torch sets ``torch.compiler.is_compiling()`` process-wide for the whole of any thread's dynamo
compile; the cached forward used it to spot an outer torch.compile, so the steps one pipeline ran
while the other compiled were taken for nested traces: run plain, uncached and unrecorded, with
no warning. One module shared by two threads calling at once still raises ``ConcurrentCallError``
(tests/test_state_heuristics.py)."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch

import dit_cachepass as dcp

diffusers = pytest.importorskip("diffusers")

STEPS = 12
CONFIG = dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.6, max_warmup_steps=2,
              max_continuous_cached_steps=2)


def _pipeline(seed: int):
    """A tiny FLUX pipeline with random weights (README's), cached with the eager backend, and its
    inputs. Same seed, same weights and inputs."""
    torch.manual_seed(seed)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=4, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8))
    pipe = diffusers.FluxPipeline(diffusers.FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None,
                                  tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    dcp.enable_cache(pipe, dcp.DBCacheConfig(**CONFIG), backend="eager")
    g = torch.Generator().manual_seed(seed)
    inputs = dict(prompt_embeds=torch.randn(1, 8, 32, generator=g), pooled_prompt_embeds=torch.randn(1, 32, generator=g))
    return pipe, inputs, seed


def _generate(p) -> tuple[torch.Tensor, list[int], list[int], int]:
    pipe, inputs, seed = p
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = pipe(**inputs, height=32, width=32, num_inference_steps=STEPS, guidance_scale=1.0, output_type="latent",
                   generator=torch.Generator().manual_seed(seed)).images
    s = dcp.summary(pipe)
    loop = s.loops[0] if s.loops else None
    return (out, loop.cached_steps if loop else [], loop.computed_steps if loop else [],
            pipe.transformer._dit_cachepass.calls)


def _in_threads(pipes: list, generations: int) -> list[list[tuple]]:
    """Each pipeline generates ``generations`` times in its own thread; the threads start
    together. Returns each pipeline's results (an exception is re-raised here)."""
    barrier = threading.Barrier(len(pipes))
    results: list = [None] * len(pipes)
    errors: list = []

    def work(i: int) -> None:
        try:
            torch.set_num_threads(1)
            barrier.wait(timeout=60)
            results[i] = [_generate(pipes[i]) for _ in range(generations)]
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,), name=f"pipe{i}") for i in range(len(pipes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a generation thread hung"
    if errors:
        raise errors[0]
    return results


def _assert_solo(got: tuple, solo: tuple, what: str) -> None:
    out, cached, computed, calls = got
    assert (cached, computed, calls) == solo[1:], (
        f"{what}: cached steps {cached} / computed {computed} / calls {calls}, alone "
        f"{solo[1]} / {solo[2]} / {solo[3]}")
    assert torch.equal(out, solo[0]), f"{what}: output differs from its solo run by {(out - solo[0]).abs().max():.3g}"


def test_two_cached_pipelines_in_two_threads_each_as_alone():
    torch.set_num_threads(1)
    seeds = (1, 2)
    solo = {s: _generate(_pipeline(s)) for s in seeds}  # each alone, first generation (compiles)
    for s in seeds:
        assert solo[s][1], f"the config must cache something alone (pipeline {s}): {solo[s]}"
        assert solo[s][3] == STEPS

    for rep in range(3):
        # both fresh: each compiles on its first call while the other one compiles or runs
        pipes = [_pipeline(s) for s in seeds]
        for s, runs in zip(seeds, _in_threads(pipes, generations=2)):
            for k, got in enumerate(runs):
                _assert_solo(got, solo[s], f"rep {rep}, pipeline {s}, generation {k} (both fresh)")

    # one warm, one fresh: the warm pipeline's whole generation runs while the other compiles
    warm = _pipeline(1)
    _assert_solo(_generate(warm), solo[1], "warm-up of pipeline 1")
    for rep in range(2):
        pipes = [warm, _pipeline(2)]
        for s, runs in zip(seeds, _in_threads(pipes, generations=1)):
            _assert_solo(runs[0], solo[s], f"rep {rep}, pipeline {s} ({'warm' if s == 1 else 'compiling'})")


def test_one_module_in_two_threads_at_once_is_still_refused():
    """The existing rule stays: one cached module (one pipeline) called from a second thread while
    a generation of the first is in progress raises ConcurrentCallError in the second thread; the
    first generation is unharmed (equal to a generation alone)."""
    torch.set_num_threads(1)
    solo = _generate(_pipeline(3))
    p = _pipeline(3)
    _generate(p)  # compiled: the race below is between calls, not compiles
    inside, tried = threading.Event(), threading.Event()
    session = p[0].transformer._dit_cachepass
    place = session.place
    errors: list = []

    def slow_place():  # the first generation pauses in a call until the second thread has tried
        if threading.current_thread().name == "first" and not inside.is_set():
            inside.set()
            assert tried.wait(60)
        place()

    def second():
        assert inside.wait(60)
        try:
            _generate(p)
        except dcp.ConcurrentCallError as e:
            errors.append(e)
        finally:
            tried.set()

    session.place = slow_place
    results: list = []
    t1 = threading.Thread(target=lambda: results.append(_generate(p)), name="first")
    t2 = threading.Thread(target=second, name="second")
    t1.start(), t2.start()
    t1.join(120), t2.join(120)
    del session.place
    assert len(errors) == 1 and len(results) == 1
    _assert_solo(results[0], solo, "the first thread's generation")
