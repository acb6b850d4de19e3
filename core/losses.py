"""Losses; each returns a dict of named terms whose ``loss`` entry is what gets minimised.

LMM-regularized CLIP (Tzelepi & Mezaris): ``J = J_ce + alpha * J_reg``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def description_regularizer(x: torch.Tensor, class_means: torch.Tensor, labels: torch.Tensor):
    """``J_reg = mean_i ||x_i - C[l_i]||^2``: pull each embedding to its class's mean description.

    The paper writes ``J_reg = sum_i ||x_i - C_{l_i}||^2`` over the batch. We use the batch mean,
    i.e. the paper's sum divided by the batch size B, so that the same ``alpha`` means the same
    balance against the (batch-averaged) cross-entropy at any batch size or worker count; the
    paper's alpha equals ours divided by B.
    """
    targets = class_means.to(dtype=x.dtype)[labels]
    return (x - targets).pow(2).sum(dim=1).mean()


def regularized_ce_loss(
    logits: torch.Tensor,
    x: torch.Tensor,
    labels: torch.Tensor,
    class_means: torch.Tensor,
    alpha: float,
    weights: torch.Tensor | None = None,
    count: torch.Tensor | float | None = None,
) -> dict[str, torch.Tensor]:
    """``J = CE + alpha * J_reg``; alpha = 0 is the fine-tuning baseline (J_reg is still logged).

    ``weights`` [B] (1 = use the row, 0 = skip it, e.g. an unreadable image) turn both batch
    means into weighted sums divided by ``count`` (default: the weights' sum), so a worker can
    divide by its share of the whole group's rows and N workers still train like one.
    """
    if weights is None:
        ce = F.cross_entropy(logits.float(), labels)
        reg = description_regularizer(x.float(), class_means, labels)
    else:
        n = weights.sum().clamp(min=1) if count is None else count
        ce = (F.cross_entropy(logits.float(), labels, reduction="none") * weights).sum() / n
        targets = class_means.to(dtype=torch.float32)[labels]
        reg = ((x.float() - targets).pow(2).sum(dim=1) * weights).sum() / n
    loss = ce + alpha * reg if alpha else ce
    return {"loss": loss, "ce": ce.detach(), "reg": reg.detach()}


# CLIP-Decoder (Ali & Khan): ``L = alpha * L_clip + beta * L_cls`` with ASL as ``L_cls``.


def asymmetric_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma_neg: float = 4.0,
    gamma_pos: float = 0.0,
    clip: float = 0.05,
    eps: float = 1e-8,
    reduction: str = "sum",
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Asymmetric loss (ASL, Ridnik et al.) for multi-label logits [B, L] and 0/1 targets [B, L].

    ``weights`` [B] weigh whole rows (0 skips an unreadable image); ``"mean"`` then divides by
    the weighted row count times L.

    Per entry, with ``p = sigmoid(x)`` and the shifted negative probability
    ``q = min(1, 1 - p + clip)``: positives give ``-(1 - p)^gamma_pos * log(p)`` and negatives
    ``-(1 - q)^gamma_neg * log(q)``; probabilities are clamped at ``eps`` inside the logs. The
    shift discards very easy negatives and ``gamma_neg`` down-weights the rest, which is what makes
    training on hundreds of mostly-negative labels work. The focusing weights carry no gradient, as
    in ML-Decoder's training (``disable_torch_grad_focal_loss=True``). ``reduction="sum"`` (over
    images and labels) is ML-Decoder's, so its learning rates carry over; ``"mean"`` divides by
    B * L and makes the scale independent of batch size and label count.
    """
    if logits.shape != targets.shape:
        raise ValueError(
            f"logits {list(logits.shape)} and targets {list(targets.shape)} differ in shape"
        )
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    x = logits.float()
    y = targets.to(x.dtype)
    p = torch.sigmoid(x)
    q = 1 - p
    if clip and clip > 0:
        q = (q + clip).clamp(max=1)
    log_terms = y * torch.log(p.clamp(min=eps)) + (1 - y) * torch.log(q.clamp(min=eps))
    if gamma_neg > 0 or gamma_pos > 0:
        with torch.no_grad():
            pt = p * y + q * (1 - y)
            weight = torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))
        log_terms = log_terms * weight
    if weights is not None:
        log_terms = log_terms * weights.to(x.dtype)[:, None]
        total = -log_terms.sum()
        return total / (weights.sum().clamp(min=1) * y.shape[1]) if reduction == "mean" else total
    total = -log_terms.sum()
    return total / max(1, y.numel()) if reduction == "mean" else total


def label_alignment_loss(
    image_embed: torch.Tensor,
    label_embed: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 0.07,
) -> torch.Tensor:
    """Multi-positive contrastive loss between images [B, d] and the scored labels [L, d].

    Definition: with cosine similarities ``s_ij = <x_i, t_j> / (|x_i| |t_j|)`` and
    ``log p_ij = log_softmax_j(s_ij / temperature)`` taken over ALL L labels given (the labels the
    step scores, e.g. the seen ones), the loss of image i is ``-mean_{j in P_i} log p_ij`` over its
    positive labels ``P_i``; the result is the mean over images with at least one positive.
    Images without positives are skipped (they have nothing to align to); if no image has one, the
    loss is 0 (still connected to the graph, so backward works). This is CLIP's image-to-text
    loss with a label set in place of the batch's captions: it pulls each image toward the text
    embeddings of its labels and away from the other labels'.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if image_embed.dim() != 2 or label_embed.dim() != 2:
        raise ValueError(
            f"image_embed must be [B, d] and label_embed [L, d], got "
            f"{list(image_embed.shape)} and {list(label_embed.shape)}"
        )
    if image_embed.shape[1] != label_embed.shape[1]:
        raise ValueError(
            f"image_embed dim {image_embed.shape[1]} != label_embed dim {label_embed.shape[1]}"
        )
    if targets.shape != (image_embed.shape[0], label_embed.shape[0]):
        raise ValueError(
            f"targets must be [B, L] = [{image_embed.shape[0]}, {label_embed.shape[0]}], "
            f"got {list(targets.shape)}"
        )
    sims = F.normalize(image_embed.float(), dim=1) @ F.normalize(label_embed.float(), dim=1).T
    log_p = torch.log_softmax(sims / temperature, dim=1)
    pos = (targets > 0).to(log_p.dtype)
    n_pos = pos.sum(dim=1)
    has_pos = (n_pos > 0).to(log_p.dtype)
    # Masked sums, not boolean indexing or a Python ``if``: the step never waits for the device.
    per_image = -(log_p * pos).sum(dim=1) / n_pos.clamp(min=1)
    return (per_image * has_pos).sum() / has_pos.sum().clamp(min=1)


def clip_decoder_loss(
    logits: torch.Tensor,
    image_embed: torch.Tensor,
    label_embed: torch.Tensor,
    targets: torch.Tensor,
    alpha: float,
    beta: float,
    temperature: float = 0.07,
    gamma_neg: float = 4.0,
    gamma_pos: float = 0.0,
    asl_clip: float = 0.05,
    eps: float = 1e-8,
    cls_reduction: str = "sum",
    weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """``L = alpha * L_clip + beta * L_cls``: alignment (contrastive) plus ASL classification.

    All inputs must cover the same label set, the one being trained on (the seen labels): logits
    [B, L], label_embed [L, d], targets [B, L]. Both terms are always computed and logged, also
    when a weight is 0. ``gamma_neg``, ``gamma_pos``, ``asl_clip``, ``eps`` and ``cls_reduction``
    are :func:`asymmetric_loss`'s settings (``asl_clip`` is its ``clip``, named apart from L_clip).
    A row of weight 0 (an unreadable image) is left out of both terms.
    """
    if weights is not None:
        targets = targets * (weights > 0).to(targets.dtype)[:, None]  # no positives: no L_clip
    cls = asymmetric_loss(
        logits, targets, gamma_neg, gamma_pos, asl_clip, eps, cls_reduction, weights
    )
    align = label_alignment_loss(image_embed, label_embed, targets, temperature)
    loss = alpha * align + beta * cls
    return {"loss": loss, "clip": align.detach(), "cls": cls.detach()}
