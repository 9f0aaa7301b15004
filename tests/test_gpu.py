"""What only a GPU can check: the fast path as training runs it (bf16 frozen weights, bf16
autocast, torch.compile) against exact fp32 arithmetic and against the published path (fp16,
eager, nn.Conv3d); the inference path's CUDA graphs against the eager model; eval's nvJPEG
decoding against the CPU path's; and the training loop's side-stream copies of the next batch.

Skipped without CUDA, so the default CPU run (CI) does not see it; run on a GPU machine with
`pytest tests/test_gpu.py`. The CPU tests pin the two paths to 1e-5 in fp32 (test_model.py);
here the question is whether the precision and the compiler keep them within bf16 rounding.
"""

from __future__ import annotations

import copy

import pytest
import torch

import stadapt
from stadapt.bench.model import cudagraph_skips
from stadapt.model.build import build_model, set_impl
from stadapt.model.runtime import autocast, inference_forward, maybe_compile, place_model
from stadapt.model.video_vit import VideoClassifier

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# Relative L2 error of the logits and of the adapters' gradients against fp32. bf16 keeps 8
# significant bits (relative rounding 2^-9 ≈ 2e-3 per operation); twelve blocks of matrix
# products, attention and softmax accumulate to about 1e-2. fp16 keeps 11 bits.
BF16_TOLERANCE = 3e-2
FP16_TOLERANCE = 5e-3
LOSS_SCALE = 1024.0


def relative_error(value: torch.Tensor, exact: torch.Tensor) -> float:
    """‖value − exact‖ / ‖exact‖; an exact zero (the last block's adapters after attention,
    which never reach the CLS token) must be matched by an exact zero."""
    return ((value.float() - exact).norm() / exact.norm().clamp_min(1e-30)).item()


def randomised(recipe_name: str) -> tuple[VideoClassifier, stadapt.Recipe]:
    """The recipe's model with random backbone weights and random (non-identity) adapters."""
    recipe = stadapt.load_recipe(recipe_name, ["model.pretrained=none", "model.dropout=0"])
    model = build_model(recipe)  # the engine's own: {head: logits}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and "heads" not in name:
                param.normal_(std=0.02)
    return model.train(), recipe


def logits_and_gradients(model: VideoClassifier, video: torch.Tensor, precision: str,
                         compile_model: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    device = torch.device("cuda")
    place_model(model, device, precision)
    forward = maybe_compile(model, compile_model, device)
    if compile_model:
        assert forward is not model
    with autocast(device, precision):
        logits = forward(video)["label"]
    # Scaled so that fp16 gradients of the early blocks stay clear of underflow (no GradScaler here).
    (logits.float().square().mean() * LOSS_SCALE).backward()
    if compile_model:
        assert forward.compiled is not None, "torch.compile fell back to eager"
    grads = {n: p.grad.float() / LOSS_SCALE for n, p in model.named_parameters() if p.requires_grad and "adapters" in n}
    return logits.detach().float(), grads


@pytest.mark.parametrize("recipe_name", ["k400_vitb", "ssv2_vitb"])
def test_fast_path_on_gpu_is_within_bf16_rounding_of_fp32(recipe_name):
    torch.manual_seed(0)
    model, recipe = randomised(recipe_name)
    video = torch.randn(2, 3, recipe.data.num_frames, recipe.data.crop, recipe.data.crop, device="cuda")
    reference = copy.deepcopy(model)
    exact = copy.deepcopy(model)

    set_impl(model, "fast")
    fast_logits, fast_grads = logits_and_gradients(model, video, "bf16", compile_model=True)
    set_impl(exact, "fast")
    tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, False  # exact products
    try:
        exact_logits, exact_grads = logits_and_gradients(exact, video, "fp32", compile_model=False)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    set_impl(reference, "reference")
    reference_logits, reference_grads = logits_and_gradients(reference, video, "fp16", compile_model=False)

    errors = {"logits": (relative_error(reference_logits, exact_logits), relative_error(fast_logits, exact_logits))}
    assert fast_grads.keys() == exact_grads.keys() and len(fast_grads) > 0
    for name, exact_grad in exact_grads.items():
        errors[name] = (relative_error(reference_grads[name], exact_grad), relative_error(fast_grads[name], exact_grad))
    worst = {what: max(errors.items(), key=lambda item, i=i: item[1][i])
             for i, what in enumerate(("fp16 reference", "bf16 fast"))}
    print(f"{recipe_name}: largest relative errors against fp32: {worst}")
    assert errors["logits"][0] < FP16_TOLERANCE and errors["logits"][1] < BF16_TOLERANCE, errors["logits"]
    for name, (reference_error, fast_error) in errors.items():
        assert reference_error < FP16_TOLERANCE * 4 and fast_error < BF16_TOLERANCE * 2, (name, errors[name])


def test_prefetched_batches_arrive_on_the_gpu_intact_and_in_order():
    """The side-stream copy of DevicePrefetcher, taken while the GPU is busy with other work."""
    from stadapt.engine.stream import DevicePrefetcher

    cpu = [{"clip": torch.randint(0, 256, (4, 3, 8, 224, 224), dtype=torch.uint8).pin_memory(),
            "label": {"verb": torch.tensor([i] * 4).pin_memory(), "noun": torch.tensor([-i] * 4).pin_memory()},
            "epoch": torch.zeros(4, dtype=torch.long)} for i in range(6)]
    batches = DevicePrefetcher(iter([{**b, "label": dict(b["label"])} for b in cpu]), torch.device("cuda"))
    busy = torch.randn(4096, 4096, device="cuda")
    for expected in cpu:
        batch = next(batches)
        busy = busy @ busy / 64  # work on the compute stream while the next copy runs
        batches.prefetch()
        assert batch["clip"].is_cuda and torch.equal(batch["clip"].cpu(), expected["clip"])
        assert torch.equal(batch["label"]["noun"].cpu(), expected["label"]["noun"])
        assert not batch["epoch"].is_cuda  # bookkeeping stays on the host


def test_graph_captured_inference_matches_the_eager_model():
    """inference_forward replays CUDA graphs (mode reduce-overhead, no fallback taken); its
    outputs survive the next replay, and a short last batch is padded, not recompiled."""
    torch.manual_seed(0)
    model, recipe = randomised("k400_vitb")
    device = torch.device("cuda")
    place_model(model, device, "bf16")
    model.eval()
    shape = (4, 3, recipe.data.num_frames, recipe.data.crop, recipe.data.crop)
    videos = [torch.randint(0, 256, shape, dtype=torch.uint8, device=device) for _ in range(3)]  # as loaders give them
    with torch.no_grad(), autocast(device, "bf16"):
        eager = [model(v)["label"].float() for v in videos]
        eager_short = model(videos[2][:3])["label"].float()
    forward = inference_forward(model, True, device, batch_size=4)
    skips = cudagraph_skips()
    with autocast(device, "bf16"):
        graphed = [forward(v)["label"] for v in videos]  # warm-up, capture, replay
        again = forward(videos[0])["label"]
        short = forward(videos[2][:3])["label"]
    assert forward.mode == "reduce-overhead", "fell back from CUDA graphs"
    assert cudagraph_skips() == skips, "inductor compiled without CUDA graphs (its log says why)"
    assert short.shape == (3, recipe.model.num_classes) and not again.requires_grad
    for got, exact in zip([*graphed, again, short], [*eager, eager[0], eager_short]):
        assert relative_error(got, exact) < 2e-2  # bf16 kernels of the compiler against eager ones
    assert len({g.data_ptr() for g in graphed}) == 3  # each call's own output, not the graph's buffer


def test_gpu_jpeg_decoding_gives_the_cpu_paths_clips_and_logits(prepared_dir):
    from torch.utils.data import DataLoader

    from stadapt.data.dataset import build_dataset
    from stadapt.data.gpu_decode import StoredJpegClips, batch_jpegs, collate_jpegs, decode_clips, pack_jpegs

    recipe = stadapt.load_recipe("demo", [f"data.root={prepared_dir}", "data.source=prepared", "model.num_classes=4",
                                          "data.test_views.spatial=3", "data.test_resize=72"])
    dataset = build_dataset(recipe, "val", train=False)
    batch = next(iter(DataLoader(StoredJpegClips(dataset), batch_size=4, collate_fn=collate_jpegs)))
    clips, ok = decode_clips(batch_jpegs(batch), batch["ok"], recipe.data, torch.device("cuda"))
    expected = torch.stack([dataset[i]["clip"] for i in batch["index"].tolist()])
    assert ok.all() and clips.is_cuda and clips.shape == expected.shape
    difference = (clips.cpu().int() - expected.int()).abs().float()
    print(f"nvJPEG against the CPU path: mean {difference.mean():.3f}, max {difference.max():.0f} levels")
    assert difference.mean() < 1.0 and difference.quantile(0.999) <= 8  # two decoders' and resamplers' rounding
    assert torch.equal(decode_clips(batch_jpegs(batch), batch["ok"], recipe.data, torch.device("cuda"))[0], clips)

    items = [StoredJpegClips(dataset)[i] for i in range(3)]
    items[1].update(pack_jpegs([torch.frombuffer(bytearray(b"\xff\xd8 not a JPEG"), dtype=torch.uint8)] * 8))
    damaged = collate_jpegs(items)
    again, ok = decode_clips(batch_jpegs(damaged), damaged["ok"], recipe.data, torch.device("cuda"))
    assert ok.tolist() == [True, False, True] and again[1].eq(0).all()
    assert torch.equal(again[0], clips[0]) and torch.equal(again[2], clips[2])

    model = stadapt.build_model(recipe).cuda().eval()
    with torch.no_grad():
        logits = [model(c.cuda().flatten(0, 1)).float()
                  for c in (clips, expected)]
    assert relative_error(logits[0], logits[1]) < 2e-2


def test_eval_with_gpu_jpeg_decoding_scores_as_the_cpu_path(prepared_dir):
    from stadapt.data.dataset import build_dataset
    from stadapt.engine.distributed import DistContext
    from stadapt.engine.evaluate import predict_split

    cuda = torch.device("cuda")
    recipe = stadapt.load_recipe("demo", [f"data.root={prepared_dir}", "data.source=prepared", "model.num_classes=4",
                                          "train.device_batch_size=3", "train.workers=0", "train.compile=true"])
    dataset = build_dataset(recipe, "val", train=False)
    model = place_model(build_model(recipe), cuda, recipe.train.precision)
    ctx = DistContext(device=cuda)
    on_gpu = predict_split(model, dataset, recipe, ctx, decode="gpu", graphs=True)
    on_cpu = predict_split(model, dataset, recipe, ctx, decode="cpu", graphs=False)
    assert on_gpu.decode == "gpu" and on_gpu.ok.all() and torch.equal(on_gpu.indices, on_cpu.indices)
    # the decode thread, CUDA graphs of the compiled model, the last batch padded: the CPU path's scores
    assert (on_gpu.probs["label"] - on_cpu.probs["label"]).abs().max() < 2e-2  # decoders, compiler, bf16
