"""Towers: text ids ``(B, T)`` and lengths -> a fixed-size vector. One module per tower family.

=================  ==========================================================  =================
``encoder``        tower                                                       tokenizer
=================  ==========================================================  =================
``dssm``           bag of letter trigrams -> tanh layers (Huang et al. 2013)     ``trigram``
``cnn``            CLSM: word-trigram convolution -> max pool (Shen et al. 2014) ``trigram``
``rnn``            vanilla tanh RNN                                            any
``lstm``           LSTM                                                        any
``lstm-peephole``  LSTM with peepholes (LSTM-DSSM, Palangi et al. 2016)        any
``lstm-coupled``   LSTM with coupled input and forget gates                    any
``gru``            GRU                                                         any
=================  ==========================================================  =================
"""

from torch import nn

from deepsem.config import TowerConfig
from deepsem.towers.cnn import CNNTower
from deepsem.towers.dssm import DSSMTower
from deepsem.towers.recurrent import RECURRENT_ENCODERS, RecurrentTower

#: Towers that read the ``trigram`` tokenizer's output (letter trigrams with word separators).
TRIGRAM_ENCODERS = ("dssm", "cnn")


def build_tower(config: TowerConfig) -> nn.Module:
    """The tower named by ``config.encoder`` (an allow-list, never an import string)."""
    if config.encoder == "dssm":
        return DSSMTower(config)
    if config.encoder == "cnn":
        return CNNTower(config)
    if config.encoder in RECURRENT_ENCODERS:
        return RecurrentTower(config)
    raise ValueError(f"unknown encoder {config.encoder!r}")


__all__ = ["TRIGRAM_ENCODERS", "CNNTower", "DSSMTower", "RecurrentTower", "build_tower"]
