"""Dual-softmax matcher with a learned dustbin (MicKey, section 4.4 of the golden kit)."""
from __future__ import annotations

import torch
from torch import nn

from .precision import strict_fp32

TEMPERATURE = 0.1


class DualSoftmaxDustbin(nn.Module):
    """Descriptors (B,D,M), (B,D,N) -> match probabilities (B,M,N).

    C = [[S, d], [d, d]] with S = desc0^T desc1 / 0.1 and d the learned dustbin score;
    P = softmax_rows(C) * softmax_cols(C); the dustbin row and column are dropped.
    """

    def __init__(self, temperature: float = TEMPERATURE) -> None:
        super().__init__()
        self.temperature = temperature
        self.dustbin_score = nn.Parameter(torch.tensor(1.0))

    def forward(self, desc0: torch.Tensor, desc1: torch.Tensor) -> torch.Tensor:
        B, _, M = desc0.shape
        N = desc1.shape[2]
        S = torch.einsum('bdm,bdn->bmn', desc0, desc1) / self.temperature          # (B,M,N)
        C = self.dustbin_score.to(S.dtype).expand(B, M + 1, N + 1).clone()
        C[:, :M, :N] = S
        P = torch.softmax(C, dim=1) * torch.softmax(C, dim=2)                     # (B,M+1,N+1)
        return P[:, :M, :N]


class Matcher(nn.Module):
    """final_scores = dual-softmax match matrix * (scores0^T scores1)."""

    def __init__(self) -> None:
        super().__init__()
        self.matching_mat = DualSoftmaxDustbin()
        self.strict_fp32 = True        # CUDA: no TF32 in the similarity and score products

    def forward(self, desc0: torch.Tensor, desc1: torch.Tensor, scores0: torch.Tensor, scores1: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """desc (B,D,M)/(B,D,N), scores (B,1,M)/(B,1,N) -> (final_scores, match_matrix), both (B,M,N)."""
        with strict_fp32(self.strict_fp32 and desc0.is_cuda):
            match = self.matching_mat(desc0, desc1)
            kp_scores = scores0.transpose(1, 2) @ scores1                          # (B,M,N)
            return match * kp_scores, match
