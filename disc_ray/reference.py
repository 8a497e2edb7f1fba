"""Plain reference losses, one document (and one split) at a time on full logits: slow, for verification only.

The packed, chunked losses of :mod:`disc_ray.objectives` are tested against these (loss and gradients), and the
golden loss curve (``tests/golden``) pins them over a few dozen steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from disc_ray.splits import DocumentExample


def reference_disc_loss(student, teacher, examples: list[DocumentExample], temperature: float = 2.0) -> torch.Tensor:
    """DiSC (Distillation via Split Contexts, arXiv 2602.16093, Eq. 3) as the paper's released code computes it:
    ``disc_loss`` in ``src/disc/objectives.py`` of github.com/shankarp8/distillation-retains-capabilities
    (commit 591331d251880789f943a313101d857e9b3da9ee). Per split, one teacher pass over prefix+split and one
    student pass over the split alone, full logits, ``kl_div(batchmean) * T^2`` over the split's tokens 2..L;
    mean over the document's splits, then over documents (the released code runs the teacher under bf16
    autocast on GPU; this one in the models' own dtype). 2k forward passes per document: use only to check the
    packed implementation. Returns a 0-dim tensor with gradient to the student's parameters."""
    device = next(student.parameters()).device
    per_document = []
    for example in examples:
        ids, special = example.input_ids, example.input_ids[: example.num_special_prefix]
        per_split = []
        for start, end in example.split_spans:
            with torch.no_grad():
                teacher_logits = teacher(input_ids=torch.tensor([ids[:end]], device=device)).logits[0, start : end - 1]
            student_logits = student(input_ids=torch.tensor([special + ids[start:end]], device=device)).logits[0]
            student_logits = student_logits[len(special) : len(special) + end - start - 1]
            per_split.append(F.kl_div(F.log_softmax(student_logits / temperature, -1), F.log_softmax(teacher_logits / temperature, -1),
                                      log_target=True, reduction="batchmean") * temperature**2)
        per_document.append(torch.stack(per_split).mean())
    return torch.stack(per_document).mean()


def reference_lm_loss(student, teacher, examples: list[DocumentExample], beta: float = 0.0, temperature: float = 1.0) -> torch.Tensor:
    """``ft`` (beta=0) / ``ft_kl`` on full logits, one document at a time; mean over documents."""
    device = next(student.parameters()).device
    per_document = []
    for example in examples:
        ids = torch.tensor([example.input_ids], device=device)
        first = max(example.num_special_prefix - 1, 0)
        logits = student(input_ids=ids).logits[0, first:-1]
        loss = F.cross_entropy(logits, ids[0, first + 1 :])
        if beta:
            with torch.no_grad():
                teacher_logits = teacher(input_ids=ids).logits[0, first:-1]
            loss = loss + beta * temperature**2 * F.kl_div(F.log_softmax(logits / temperature, -1), F.log_softmax(teacher_logits / temperature, -1),
                                                            log_target=True, reduction="batchmean")
        per_document.append(loss)
    return torch.stack(per_document).mean()
