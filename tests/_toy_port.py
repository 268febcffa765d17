"""A toy CLNF port for tests/test_port.py: clnfdiag's own stage functions with one deviation.

The port computes its responses, mean-shifts and updates itself (by calling
clnfdiag's functions, as a port that exposes its stage functions would) but
uses the exact Gaussian kernel in the KDE mean-shift instead of OpenFace's
0.1-pixel table: the deviation pyclnf's default KDE has.
"""
from __future__ import annotations

import numpy as np

from clnfdiag import optimiser as opt
from clnfdiag.experts import all_landmarks, raw_response, shift_response, sigma_response
from clnfdiag.faults import mean_shift_exact_kernel
from clnfdiag.ports import PortOps


class ToyPort(PortOps):
    producer = "toy port 1.0"

    def response_raw(self, areas, scale, view):
        bank = self.experts.bank(scale, view)
        maps = raw_response(bank, np.asarray(areas)[bank.landmarks])
        return all_landmarks(maps, bank.landmarks, self.n_points)

    def response_sigma(self, raw, scale, view):
        bank = self.experts.bank(scale, view)
        maps = sigma_response(bank, np.asarray(raw)[bank.landmarks])
        return all_landmarks(maps, bank.landmarks, self.n_points)

    def response(self, sigma_maps, scale, view):
        bank = self.experts.bank(scale, view)
        maps = shift_response(np.asarray(sigma_maps)[bank.landmarks])
        return all_landmarks(maps, bank.landmarks, self.n_points)

    def mean_shifts_ref(self, responses, dxs, dys, visible, sigma):
        return mean_shift_exact_kernel(responses, dxs, dys, visible, sigma)   # the deviation

    def mean_shifts(self, mean_shifts_ref, sim_ref_to_img, visible):
        return opt.to_image_frame(mean_shifts_ref, sim_ref_to_img, visible)

    def update_solver(self, weights, visible, reg_factor, rigid):
        eig = self.pdm.eigen_values
        return lambda jac, ms, loc: opt.solve_update(jac, weights, ms, loc, eig, reg_factor, rigid,
                                                     visible)
