"""The direct kernels' channels-first padded planes (issue 13: whole channel blocks are
transposed in registers)."""

import numpy as np
import pytest

from numbanet.kernels import conv as kc


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("h", "w", "c", "pad"), [
    (6, 7, 16, 1), (5, 19, 32, 1), (4, 5, 8, 0), (6, 6, 3, 2), (7, 17, 16, 2),
])
def test_padded_planes_match_numpy(h, w, c, pad, dtype):
    g = tuple(kc.ConvGeometry(3, 3, 1, 1, pad, pad, 1, 1, h + 2 * pad - 2, w + 2 * pad - 2))
    lanes = kc.direct_lanes(dtype)
    lay = kc.direct_layout(g, lanes, w)
    x = np.random.default_rng(0).standard_normal((3, h, w, c)).astype(dtype)
    xp = np.full((3, c, lay.plane), np.nan, dtype)
    kc._pad_cf_images(x, xp, pad, pad, lay.hp, lay.wp, 0, 3)
    ref = np.zeros((3, c, lay.plane), dtype)
    planes = ref[:, :, : lay.hp * lay.wp].reshape(3, c, lay.hp, lay.wp)
    cols = min(w, lay.wp - pad)
    planes[:, :, pad : pad + h, pad : pad + cols] = x.transpose(0, 3, 1, 2)[..., :cols]
    np.testing.assert_array_equal(xp, ref)
