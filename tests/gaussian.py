"""Exact denoiser for data x0 ~ N(mean, std^2 I): E[x0 | x_t] in closed form."""

from cfglab.diffusion.targets import Prediction, broadcast


def gaussian_denoiser(schedule, mean: float, std: float):
    def denoise(x, t, labels=None):
        alpha, sigma = (broadcast(v, x) for v in schedule.alpha_sigma(t.double()))
        x0 = mean + alpha * std**2 / (alpha**2 * std**2 + sigma**2) * (x - alpha * mean)
        return Prediction(x0=x0, eps=(x - alpha * x0) / sigma)

    return denoise
