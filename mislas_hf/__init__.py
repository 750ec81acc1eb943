"""mislas_hf: MiSLAS (Zhong et al., CVPR 2021) for the Hugging Face ecosystem."""
