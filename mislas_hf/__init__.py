"""mislas_hf: MiSLAS (Zhong et al., CVPR 2021, "Improving Calibration for Long-Tailed Recognition") for the
Hugging Face ecosystem.

Importing the package registers the model with transformers' Auto classes; saved models also carry an `auto_map`,
so `trust_remote_code=True` loads them where the package is not installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .configuration_mislas import MislasConfig
from .modeling_mislas import MislasForImageClassification, MislasModel, MislasPreTrainedModel

AutoConfig.register(MislasConfig.model_type, MislasConfig)
AutoModel.register(MislasConfig, MislasModel)
AutoModelForImageClassification.register(MislasConfig, MislasForImageClassification)
MislasConfig.register_for_auto_class()
MislasModel.register_for_auto_class("AutoModel")
MislasForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__version__ = "0.1.0"
__all__ = ["MislasConfig", "MislasModel", "MislasForImageClassification", "MislasPreTrainedModel"]
