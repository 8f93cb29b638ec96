"""Issue 12: cache state a user can trust (transformer-only use, tiny toy model, eager).

Each test is a case that gave a silent wrong output before: a generation or CFG branch the
timestep heuristic guessed wrong, a call that raised, a NaN kept as a reference."""

import gc
import weakref

import pytest
import torch

import dit_cachepass as dcp
from toy_models import ToyDiT, toy_inputs

CFG = dict(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.5, max_warmup_steps=1)


def model(**cfg):
    torch.manual_seed(0)
    return dcp.compile(ToyDiT().eval(), dcp.DBCacheConfig(**{**CFG, **cfg}), backend="eager")


def plain():
    torch.manual_seed(0)
    return ToyDiT().eval()


def x_at(t, seed=0, scale=1.0, batch=2):
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(batch, 16, 8, generator=g) * scale, timestep=torch.full((batch,), float(t)))


def run(m, calls):
    with torch.no_grad():
        return [m(**x) for x in calls]


def branch_x(t, branch, seed=0):
    x = x_at(t, seed)
    if branch:
        x["hidden_states"] = x["hidden_states"] * 0.5 + 0.3
    return x


def assert_same(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_repeated_one_step_generations_at_one_timestep_never_reuse_an_old_prompt():
    """Distilled one-step models: every call is a new generation at the same timestep."""
    m, ref = model(max_warmup_steps=0, residual_diff_threshold=1.0), plain()
    calls = [x_at(999, seed=s) for s in range(7)]
    with pytest.warns(UserWarning, match="timestep heuristic cannot decide"):
        outs = run(m, calls)
    for o, x in zip(outs, calls):
        assert_same(o, run(ref, [x])[0])


def test_generation_starting_at_the_previous_last_timestep_is_a_new_generation():
    m, fresh = model(residual_diff_threshold=1.0), model(residual_diff_threshold=1.0)
    first = [x_at(1000 - 50 * s, seed=0, scale=1 + 0.01 * s) for s in range(5)]   # ends at 800
    second = [x_at(800 - 50 * s, seed=7, scale=1 + 0.01 * s) for s in range(4)]   # starts at 800
    with pytest.warns(UserWarning, match="timestep heuristic cannot decide"):
        run(m, first)
        outs = run(m, second)
    for a, b in zip(outs, run(fresh, second)):
        assert_same(a, b)
    assert dcp.summary(m).cached_steps == dcp.summary(fresh).cached_steps != []


def test_img2img_lower_first_timestep_with_an_explicit_generation():
    """A run starting below the last one's final timestep cannot be seen in the timesteps;
    dcp.generation marks it (enable_cache(pipe) does the same per pipeline call)."""
    m, fresh = model(residual_diff_threshold=1.0), model(residual_diff_threshold=1.0)
    first = [x_at(1000 - 100 * s, seed=0, scale=1 + 0.01 * s) for s in range(5)]   # ends at 600
    second = [x_at(500 - 50 * s, seed=3, scale=1 + 0.01 * s) for s in range(4)]    # starts below
    with dcp.generation(m, num_inference_steps=5):
        run(m, first)
    with dcp.generation(m, num_inference_steps=4):
        outs = run(m, second)
    with dcp.generation(fresh):
        refs = run(fresh, second)
    for a, b in zip(outs, refs):
        assert_same(a, b)
    s = dcp.summary(m)
    assert s.loops[0].generations == 2 and s.cached_steps == dcp.summary(fresh).cached_steps != []


def _independent(branch, ts):
    """One branch alone on a fresh model, as one named branch of one generation."""
    m = model()
    with dcp.generation(m), dcp.branch(m, "cond"):
        return run(m, [branch_x(t, branch) for t in ts])


def test_bf16_colliding_timesteps_with_explicit_branches():
    """HunyuanVideo-style bf16 timesteps: 1000, 1000, 996, 996, 996 ... collide across steps;
    named branches keep cond and uncond apart whatever the timesteps do."""
    ts = [1000.0, 1000.0, 996.0, 996.0, 996.0, 992.0, 992.0, 988.0]
    m = model()
    outs = {0: [], 1: []}
    with dcp.generation(m, num_inference_steps=len(ts)), torch.no_grad():
        for t in ts:
            for br, name in ((0, "cond"), (1, "uncond")):
                with dcp.branch(m, name):
                    outs[br].append(m(**branch_x(t, br)))
    for br in (0, 1):
        for a, b in zip(outs[br], _independent(br, ts)):
            assert_same(a, b)
    loops = dcp.summary(m).loops
    assert [l.name for l in loops] == ["blocks", "blocks [uncond]"]
    assert all(l.cached_steps for l in loops)
    assert [r.step for r in loops[1].steps] == list(range(len(ts)))


def test_colliding_timesteps_without_names_compute_instead_of_guessing():
    """Heuristic only, inside a known generation: a step whose calls outnumber the branches
    computes (never applies a residual of the other branch) and warns."""
    ts = [1000.0, 996.0, 996.0, 992.0]  # the steps' timesteps; two calls (cond, uncond) each
    m, ref = model(max_warmup_steps=0, residual_diff_threshold=1.0), plain()
    calls = [branch_x(t, br) for t in ts for br in (0, 1)]
    with dcp.generation(m), pytest.warns(UserWarning, match="these calls compute"):
        outs = run(m, calls)
    for k in (4, 5):  # the 2nd pair at 996: cannot be placed, computed
        assert_same(outs[k], run(ref, [calls[k]])[0])


def _flaky(m) -> dict:
    """Compile ``m``, start over, and make its last non-middle piece raise once each time the
    returned dict's "armed" is set (a simulated out-of-memory)."""
    with torch.no_grad():
        m(**branch_x(1000, 0))  # compile, then start over
    dcp.refresh(m)
    runner = m._dit_cachepass.runners[0]
    k = max(i for i, p in enumerate(runner.prog.pieces) if p.kind != "middle")
    real, fail = runner.fns[k], {"armed": False}

    def flaky(*args):
        if fail["armed"]:
            fail["armed"] = False
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(*args)

    runner.fns[k] = flaky
    return fail


def _cfg_steps_with_a_failing_cond_call(m, fail: dict, retry: bool) -> dict:
    """Six steps of cond + uncond calls; the cond call of step 3 raises once and is repeated
    (``retry``) or not. Returns {(step, branch): output}."""
    outs = {}
    with torch.no_grad():
        for s in range(6):
            for br in (0, 1):
                x = branch_x(1000 - 50 * s, br)
                if s == 3 and br == 0:
                    fail["armed"] = True
                    with pytest.raises(RuntimeError, match="simulated"):
                        m(**x)
                    if not retry:
                        continue
                outs[s, br] = m(**x)
    return outs


@pytest.mark.parametrize("mode", [None, True])
def test_a_call_that_raises_and_is_retried_is_filed_like_the_first_attempt(mode):
    steps = range(6)
    m = model(enable_separate_cfg=mode)
    outs = _cfg_steps_with_a_failing_cond_call(m, _flaky(m), retry=True)
    ts = [1000 - 50 * s for s in steps]
    for br in (0, 1):
        for s, b in zip(steps, _independent(br, ts)):
            assert_same(outs[s, br], b)
    loops = dcp.summary(m).loops
    assert [len(l.steps) for l in loops] == [6, 6] and loops[0].cached_steps


def test_a_call_that_raises_and_is_not_retried_never_shifts_the_branches():
    """Issue 24.6: cond raises at step 3 and the caller moves on to uncond. The heuristic's count
    at that timestep lost a call: the uncond call must not be filed as cond (it would reuse the
    cond residual); it computes, and later steps are placed as before, in one generation."""
    m, ref = model(residual_diff_threshold=1.0), plain()
    with pytest.warns(UserWarning, match="not a retry"):
        outs = _cfg_steps_with_a_failing_cond_call(m, _flaky(m), retry=False)
    with torch.no_grad():
        assert_same(outs[3, 1], ref(**branch_x(1000 - 50 * 3, 1)))
    loops = dcp.summary(m).loops
    assert [[r.step for r in l.steps] for l in loops] == [[0, 1, 2, 4, 5]] * 2
    assert all(r.cached for l in loops for r in l.steps[1:])


def test_nan_at_threshold_one_never_poisons_later_steps():
    m, ref = model(residual_diff_threshold=1.0, max_warmup_steps=2), plain()
    xs = [x_at(1000 - 50 * s, scale=1 + 0.01 * s) for s in range(5)]
    xs[1]["hidden_states"][0, 0, 0] = float("nan")  # a computed (warmup) step produces NaN
    with pytest.warns(UserWarning, match="non-finite"):
        outs = run(m, xs)
    assert torch.isfinite(outs[2]).all()
    assert_same(outs[2], run(ref, [xs[2]])[0])  # no reference kept from step 1: computed
    steps = dcp.summary(m).loops[0].steps
    assert [r.reason for r in steps[:3]] == ["warmup", "warmup", "no-reference"]
    assert steps[3].cached and all(torch.isfinite(o).all() for o in outs[2:])
    # a NaN diff computes at threshold >= 1 (it used to cache without reading the diff)
    bad = x_at(1000 - 50 * 5, scale=1.05)
    bad["hidden_states"][1, 2, 3] = float("nan")
    run(m, [bad])
    assert dcp.summary(m).loops[0].steps[-1].reason == "non-finite-diff"


def test_refresh_brings_branch_splitting_back_after_the_heuristic_gave_up():
    m = model()
    with pytest.warns(UserWarning, match="timestep heuristic cannot decide"):
        run(m, [x_at(1000)] * 9)  # a constant timestep: not CFG
    dcp.refresh(m)
    ts = [1000 - 50 * s for s in range(6)]
    outs = run(m, [branch_x(t, br) for t in ts for br in (0, 1)])
    for br in (0, 1):
        for a, b in zip(outs[br::2], _independent(br, ts)):
            assert_same(a, b)
    loops = {l.name: l for l in dcp.summary(m).loops}
    assert [r.step for r in loops["blocks [cfg branch 1]"].steps] == list(range(6))
    assert loops["blocks"].cached_steps


def test_history_is_bounded_and_memory_stays_flat_over_1000_generations():
    """RSS over 1000 generations; the Python heap (tracemalloc, which slows every allocation
    ~5x) over the last 300 of them, long after the history reached its bound, at the same
    per-generation budget (256 bytes: a leak of one small object per generation fails)."""
    import psutil
    import tracemalloc

    m = model(max_warmup_steps=0, residual_diff_threshold=1.0)
    calls = [toy_inputs(s, batch=1, tokens=4) for s in range(2)]

    def generations(n):
        with torch.no_grad():
            for _ in range(n):
                with dcp.generation(m):
                    m(**calls[0])
                    m(**calls[1])

    generations(50)
    gc.collect()
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    generations(700)
    gc.collect()
    tracemalloc.start()
    try:
        heap0 = tracemalloc.get_traced_memory()[0]
        generations(300)
        gc.collect()
        heap1 = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    rss1 = proc.memory_info().rss
    st = next(iter(m._dit_cachepass.states.values()))
    assert len(st.history) <= st.MAX_HISTORY and st.finished >= 1000
    assert dcp.summary(m).loops[0].generations == st.finished + 1
    assert heap1 - heap0 < 300 * 256, f"Python heap grew by {heap1 - heap0} bytes over 300 generations"
    assert rss1 - rss0 < 32 * 2**20, f"RSS grew by {(rss1 - rss0) / 2**20:.1f} MiB"


def _backend_compiled(seed, **cfg):
    torch.manual_seed(seed)
    return torch.compile(ToyDiT().eval(), backend="dit_cache",
                         options={"cache_config": dcp.DBCacheConfig(**{**CFG, **cfg}), "backend": "eager"})


def test_torch_compile_backend_gives_each_module_its_own_session():
    """torch compares backend options by value and dynamo caches per code object of the class's
    forward: two modules with equal options share the compiled runner, never the state."""
    a, b = _backend_compiled(0), _backend_compiled(1)
    xs = [toy_inputs(s) for s in range(6)]
    with torch.no_grad():
        outs = [(a(**x), b(**x)) for x in xs]
    fresh_b = _backend_compiled(1)
    for (_, ob), rb in zip(outs, run(fresh_b, xs)):
        assert_same(ob, rb)
    sa, sb = dcp.summary(a), dcp.summary(b)
    assert sa.cached_steps and sb.cached_steps == dcp.summary(fresh_b).cached_steps
    assert dcp.api._session(a) is not dcp.api._session(b)
    dcp.refresh(b)
    dcp.disable(b)  # stays compiled, computes every step from now on
    torch.manual_seed(1)
    plain_b = ToyDiT().eval()
    assert_same(run(b, [xs[3]])[0], run(plain_b, [xs[3]])[0])


def test_cache_state_dies_with_its_module():
    t = _backend_compiled(0)
    run(t, [toy_inputs(s) for s in range(4)])
    session = dcp.api._session(t)
    res = weakref.ref(next(iter(session.states.values())).buffers[None].residuals[0])
    sref = weakref.ref(session)
    del t, session
    gc.collect()
    assert res() is None and sref() is None


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_a_dcp_compiled_module_and_its_state_are_freed_with_it(backend):
    """dynamo keeps the backend and its runners in a cache on the forward's (private) code object,
    which the garbage collector cannot see through: they hold the session and module weakly."""
    torch.manual_seed(0)
    m = dcp.compile(ToyDiT().eval(), dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1,
                                                       residual_diff_threshold=0.9, max_warmup_steps=1),
                    backend=backend)
    run(m, [toy_inputs(s) for s in range(4)])
    session = m._dit_cachepass
    assert dcp.summary(m).cached_steps
    res = weakref.ref(next(iter(session.states.values())).buffers[None].residuals[0])
    refs = weakref.ref(m), weakref.ref(session)
    del m, session
    gc.collect()
    assert res() is None and all(r() is None for r in refs)


def test_calls_with_gradients_compute_and_leave_the_cache_alone():
    """A cached step has no gradient through the blocks it skips (guidance by gradients, a
    sampling loop written without no_grad): such calls compute every block, touch no state and
    say so once; the next generation under no_grad caches as usual."""
    m, ref = model(max_warmup_steps=0, residual_diff_threshold=1.0), plain()
    calls = [x_at(1000 - 50 * s, scale=1 + 0.01 * s) for s in range(5)]
    with pytest.warns(UserWarning, match="gradients enabled computes every block") as rec:
        outs = [m(**x) for x in calls]
    assert sum("gradients enabled" in str(w.message) for w in rec) == 1
    for o, x in zip(outs, calls):
        assert o.requires_grad and torch.equal(o, ref(**x))
    outs[-1].sum().backward()  # through every block of the last call, none skipped
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.blocks[len(m.blocks) // 2].ff.parameters())
    assert not dcp.summary(m).cached_steps and not any(
        st.buffers for st in m._dit_cachepass.states.values())
    run(m, [x_at(1000 - 50 * s, scale=1 + 0.01 * s) for s in range(5)])
    assert dcp.summary(m).cached_steps  # the same calls under no_grad cache


def test_a_second_thread_calling_mid_call_is_refused_and_the_first_call_is_unharmed():
    """A server calling one cached module from two threads: the second call, made while the
    first is in progress, would join it (nested calls do) and file its steps under the first
    call's branch and step. It raises instead, naming the fix; the first call and the cache
    state are those of a run without it; the same thread may call again afterwards, any thread
    may call once no call is in progress."""
    import threading

    m, ref = model(max_warmup_steps=0), model(max_warmup_steps=0)
    calls = [x_at(1000 - 50 * s, scale=1 + 0.01 * s) for s in range(5)]
    session = m._dit_cachepass
    inside, tried = threading.Event(), threading.Event()
    place = session.place
    errors = []

    def slow_place():  # the first call of thread A pauses inside, until thread B has tried
        if threading.current_thread().name == "A" and not inside.is_set():
            inside.set()
            assert tried.wait(30)
        place()

    def second():
        assert inside.wait(30)
        try:
            with torch.no_grad():
                m(**calls[0])
        except dcp.ConcurrentCallError as e:
            errors.append(str(e))
        finally:
            tried.set()

    session.place = slow_place
    outs = []
    a = threading.Thread(target=lambda: outs.extend(run(m, calls)), name="A")
    b = threading.Thread(target=second, name="B")
    a.start(), b.start()
    a.join(60), b.join(60)
    assert len(errors) == 1 and "second thread" in errors[0] and "copy.deepcopy" in errors[0]
    expected = run(ref, calls)
    assert len(outs) == 5 and all(torch.equal(o, e) for o, e in zip(outs, expected))
    assert dcp.summary(m).cached_steps == dcp.summary(ref).cached_steps != []
    again = []
    t = threading.Thread(target=lambda: again.extend(run(m, calls)))  # no call in progress: any thread
    t.start(), t.join(60)
    assert all(torch.equal(o, e) for o, e in zip(again, run(ref, calls)))


def test_a_second_thread_calling_between_the_steps_of_a_generation_is_refused():
    """Two pipeline calls sharing one transformer in two threads interleave their steps without
    overlapping a call: inside a generation (``enable_cache``'d pipeline calls, ``dcp.generation``)
    a call or generation from another thread raises, and the generation in progress is unharmed."""
    import threading

    m, ref = model(max_warmup_steps=0), model(max_warmup_steps=0)
    calls = [x_at(1000 - 50 * s, scale=1 + 0.01 * s) for s in range(5)]
    errors, outs = [], []

    def other():
        for use in (lambda: run(m, calls[:1]), lambda: dcp.generation(m).__enter__()):
            try:
                use()
            except dcp.ConcurrentCallError as e:
                errors.append(str(e))

    with dcp.generation(m):
        outs += run(m, calls[:2])
        b = threading.Thread(target=other)
        b.start(), b.join(60)
        outs += run(m, calls[2:])
    assert len(errors) == 2 and all("a generation (a pipeline call) is in progress" in e for e in errors)
    with dcp.generation(ref):
        expected = run(ref, calls)
    assert all(torch.equal(o, e) for o, e in zip(outs, expected))
    assert dcp.summary(m).cached_steps == dcp.summary(ref).cached_steps != []
