"""symnet: a symbolic-differentiation compiler for multilayer perceptrons."""

from codegen import notices

from . import datasets, formulas, functions, interrupts, optim, schedules
from .blocks import batch_norm, dropout, layer_norm
from .declare import Constant, Input, batch, dense, parameter, weights
from .errors import DataError, DeclarationError, DifferentiationError, ShapeError, SymnetError
from .evaluate import evaluate
from .functions import (
    Activation,
    Elementwise,
    abs,
    activation,
    binary_cross_entropy,
    cross_entropy,
    elu,
    exp,
    gelu,
    hard_sigmoid,
    hard_tanh,
    identity,
    l1,
    l2,
    leaky_relu,
    log,
    log_softmax,
    logsumexp,
    maxout,
    mean,
    mse,
    prelu,
    relu,
    sigmoid,
    softmax,
    softmax_cross_entropy,
    softplus,
    square,
    sse,
    sum,
    swish,
    tanh,
)
from .gradcheck import gradcheck
from .model import History, Model, compile, load

__version__ = "0.1.0"

notices.hide(__name__)  # the kernels' warnings name the user's line, not symnet's
