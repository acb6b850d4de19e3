"""Mean semantic class descriptions: captions → frozen CLIP text encoder → per-class means.

    python -m ray_jobs.class_descriptions --config ray_jobs/configs/class_descriptions_demo.yaml

Run after ``ray_jobs.caption``; writes ``class_means.safetensors`` (+ a ``.json`` summary) that the
regularized training job reads.
"""

from __future__ import annotations

from core import storage
from core.config import ClassMeansJobConfig
from core.text.class_means import ClassMeansResult, compute_class_means
from ray_jobs.cli import init_ray, parse_job_config, run_main


def class_descriptions(cfg: ClassMeansJobConfig) -> ClassMeansResult:
    """Run the class-means job for ``cfg`` on the current (or a new local) Ray instance."""
    init_ray(cfg.ray, cpus_needed=cfg.num_actors + 1)
    return compute_class_means(cfg)


def main(argv: list[str] | None = None) -> ClassMeansResult:
    cfg = parse_job_config(
        ClassMeansJobConfig,
        "Average CLIP text embeddings of each class's captions.",
        argv,
        job="class_descriptions",
    )
    result = class_descriptions(cfg)
    print(
        f"class means done: {len(result.classes)} classes, {result.captions_used} captions used, "
        f"{result.captions_skipped} skipped, {len(result.prompts)} prompt(s), "
        f"dim {result.embed_dim}, normalize={result.normalize}, in {result.seconds:.1f}s"
    )
    width = max(len(c) for c in result.classes)
    for name, count in result.captions_per_class.items():
        print(f"  {name:<{width}}  {count} captions")
    print(f"class means: {result.output}")
    print(f"summary: {result.summary_path}")
    print(storage.dumps_json(result.as_dict()))
    return result


if __name__ == "__main__":
    run_main(main)
