"""The engine a user would pick instead: diffusers' `DiTPipeline` on the very weights the other backends run,
eager or with its transformer under `torch.compile(mode="reduce-overhead", fullgraph=True)` (the one line
diffusers' docs give; CUDA graphs by inductor).

    peer = DiffusersPeer.build(model, device="cuda:0", precision="bf16", compiled=True, steps=250)
    peer(labels, cfg_scale=4.0, seed=0)     # one trajectory: the pipeline's own __call__, samples on the host

The weights: `model.static(base patch)` (the fp32 network the reference loop and the torch engines are made
from) renamed to diffusers' layout by model/diffusers_layout.py and loaded into a `DiTTransformer2DModel`
with strict key checking; nothing is downloaded. The loop is `DiTPipeline.__call__` itself: the batch doubled
for CFG, guidance on the first `in_channels` channels, the learned variance dropped, `DDPMScheduler.step`
(DiT's linear β schedule, 1000 training steps spaced to `steps`, x0 not clipped, as DiT samples). Its VAE is
a stand-in: diffusers' `AutoencoderKL` at one 32-channel block without up-sampling (a few convolutions on the
latent grid, well under 1% of a trajectory), because the pipeline always decodes and the bench times
latents: the other rows decode nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DIFFUSERS_PRECISIONS = ("fp16", "bf16")
COMPILE_OPTIONS = {"mode": "reduce-overhead", "fullgraph": True, "dynamic": False}  # one graph per batch


def peer_spec(backend: str) -> tuple[bool, str]:
    """(compiled, precision) of a backend named `diffusers[-compiled]-<fp16|bf16>`."""
    stem, _, precision = backend.rpartition("-")
    if stem not in ("diffusers", "diffusers-compiled") or precision not in DIFFUSERS_PRECISIONS:
        raise ValueError(f"{backend!r} is not a diffusers backend")
    return stem == "diffusers-compiled", precision


@dataclass
class DiffusersPeer:
    pipe: Any  # a diffusers DiTPipeline
    device: str
    steps: int

    @classmethod
    def build(cls, model: Any, *, device: str, precision: str, compiled: bool, steps: int) -> DiffusersPeer:
        """The pipeline on `model`'s base-patch weights cast to `precision` (fp32, fp16 or bf16)."""
        import torch
        from diffusers import AutoencoderKL, DDPMScheduler, DiTPipeline, DiTTransformer2DModel

        from ..model.diffusers_layout import diffusers_config, reference_to_diffusers

        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        static = model.static(model.config.patch_size)
        with torch.device(device):
            transformer = DiTTransformer2DModel(**diffusers_config(static.config))
            vae = AutoencoderKL(
                in_channels=3,
                out_channels=3,
                down_block_types=("DownEncoderBlock2D",),
                up_block_types=("UpDecoderBlock2D",),
                block_out_channels=(32,),
                layers_per_block=1,
                latent_channels=static.config.in_channels,
                sample_size=static.config.input_size,
            )
        transformer.load_state_dict(reference_to_diffusers(static.state_dict()), strict=True)
        # .to(device) too: a table built from numpy inside the constructors stays on the host otherwise.
        transformer.to(device=device, dtype=dtype).eval().requires_grad_(False)
        vae.to(device=device, dtype=dtype).eval().requires_grad_(False)
        scheduler = DDPMScheduler(
            num_train_timesteps=1000,
            beta_schedule="linear",
            beta_start=1e-4,
            beta_end=0.02,
            clip_sample=False,
        )
        pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        if compiled:
            pipe.transformer = torch.compile(pipe.transformer, **COMPILE_OPTIONS)
        return cls(pipe, device, steps)

    def __call__(self, labels: list[int], *, cfg_scale: float, seed: int) -> Any:
        """One trajectory through `DiTPipeline.__call__`: samples [n, H, W, 3] as numpy, on the host."""
        import torch

        generator = torch.Generator(self.device).manual_seed(seed)
        return self.pipe(  # as a user calls it (the pipeline runs under no_grad by itself)
            class_labels=labels,
            guidance_scale=cfg_scale,
            generator=generator,
            num_inference_steps=self.steps,
            output_type="np",
        ).images

    def close(self) -> None:
        """Drop the pipeline and what torch.compile keeps for it (its graphs and their memory pool)."""
        import torch

        self.pipe = None
        torch._dynamo.reset()


def peer_trajectories(session: Any, peer: DiffusersPeer) -> list[dict]:
    """Per image count of the run: the first call (cold: inductor compiles and captures the CUDA graphs for
    that batch), then `repeats` timed calls; wall time from the call to the samples on the host."""
    import time

    from .measure import time_wall

    opts, out = session.options, []
    for images in opts.batch_sizes:
        labels = session.labels(images)

        def call(labels: list[int] = labels) -> Any:
            return peer(labels, cfg_scale=opts.cfg_scale, seed=opts.seed)

        start = time.perf_counter()
        call()
        cold_s = time.perf_counter() - start
        stats, _ = time_wall(call, opts.repeats, warmup=0)
        wall_s = stats.median_ms / 1e3
        out.append(
            {
                "images": images,
                "budget": None,  # diffusers runs the static model: every step at the base patch size
                "cold_s": cold_s,
                "wall": stats.to_dict(),
                "wall_s": wall_s,
                "images_per_s": images / wall_s,
            }
        )
        session.say(f"diffusers: {images} images {wall_s:.3f} s (first call {cold_s:.1f} s)")
    return out
