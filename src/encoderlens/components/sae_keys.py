"""Every ``cfg.json`` key SAELens writes, and what encoderlens does with it (read by
:func:`encoderlens.components.sae_format.sae_config_from_dict`).

The key lists come from SAELens's own code: SAELens 6's ``SAEConfig`` and per-architecture configs and
its ``LLM_METADATA_KEYS``; SAELens 5's flat ``SAEConfig``; and the training-run keys SAELens <= 5 wrote
into ``cfg.json`` alongside (``LanguageModelSAERunnerConfig``).
"""

from __future__ import annotations

#: What happens to each ``cfg.json`` key that defines the computation or where the SAE attaches.
KEY_HANDLING: dict[str, str] = {
    **dict.fromkeys(
        ("architecture", "d_in", "d_sae", "dtype", "apply_b_dec_to_input", "reshape_activations", "k"), "applied"
    ),
    "rescale_acts_by_decoder_norm": "applied (top-k)",
    "normalize_activations": "applied; 'expected_average_only_in' needs norm_scaling_factor",
    "activation_fn": "relu / topk applied, others refused",
    "activation_fn_str": "relu / topk applied, others refused",
    "activation_fn_kwargs": "k applied",
    "finetuning_scaling_factor": "the weights' scaling_factor folded into W_dec",
    "hook_name": "where add_sae attaches the SAE",
    "hook_point": "old name of hook_name",
    "hook_head_index": "refused unless null (per-head SAEs)",
    "hook_point_head_index": "old name of hook_head_index",
    "device": "ignored: load_sae's device argument decides",
    "model_from_pretrained_kwargs": "kept; weight-processing options warn",
    "metadata": "read",
    "meta": "read",
}

# fmt: off
#: Keys describing how the SAE was trained, not how it computes: kept in ``cfg.metadata``.
INFORMATIONAL_KEYS = frozenset([
    "model_name", "model_class_name", "hook_layer", "hook_point_layer", "prepend_bos", "context_size",
    "dataset_path", "dataset_trust_remote_code", "neuronpedia_id", "seqpos_slice", "exclude_special_tokens",
    "sae_lens_version", "sae_lens_training_version", "hook_name_out", "hook_head_index_out", "model_kwargs",
    # SAELens <= 5 wrote the whole training-run config into cfg.json
    "act_store_device", "adam_beta1", "adam_beta2", "autocast", "autocast_lm", "b_dec_init_method",
    "begin_batch_token", "begin_sequence_token", "buffer_size_gb", "cached_activations_path", "checkpoint_path",
    "column_name", "compile_llm", "compile_sae", "d_sae_expansion", "data_dir", "data_files", "dataset_name",
    "dead_feature_threshold", "dead_feature_window", "decoder_heuristic_init", "decoder_heuristic_init_norm",
    "decoder_orthogonal_init", "eval_batch_size_prompts", "eval_every_n_wandb_logs", "expansion_factor",
    "feature_sampling_window", "finetuning_method", "finetuning_tokens", "from_pretrained_path",
    "hf_is_private_repo", "hf_num_shards", "hf_repo_id", "hf_revision", "hook_eval",
    "init_encoder_as_decoder_transpose", "is_dataset_tokenized", "jumprelu_bandwidth", "jumprelu_init_threshold",
    "l1_coefficient", "l1_warm_up_steps", "llm_compilation_mode", "log_activations_store_to_wandb",
    "log_optimizer_state_to_wandb", "log_to_wandb", "lp_norm", "lr", "lr_decay_steps", "lr_end",
    "lr_scheduler_name", "lr_warm_up_steps", "model_batch_size", "mse_loss_normalization", "n_batches_in_buffer",
    "n_checkpoints", "n_eval_batches", "n_restart_cycles", "new_cached_activations_path", "noise_scale",
    "normalize_sae_decoder", "num_proc", "pretokenize_batch_size", "resume", "run_name", "sae_compilation_mode",
    "save_path", "scale_sparsity_penalty_by_decoder_norm", "seed", "sequence_separator_token", "shuffle", "split",
    "store_batch_size_prompts", "streaming", "tokenizer_name", "train_batch_size_tokens", "training_tokens",
    "use_cached_activations", "use_ghost_grads", "verbose", "wandb_entity", "wandb_id", "wandb_log_frequency",
    "wandb_project", "tokens_per_buffer", "total_training_steps", "total_training_tokens", "sae_class_name",
])
#: Keys SAELens 6 keeps in ``metadata`` (its ``LLM_METADATA_KEYS``): where a release's override of one goes.
METADATA_KEYS = frozenset([
    "model_name", "hook_name", "model_class_name", "hook_head_index", "model_from_pretrained_kwargs",
    "prepend_bos", "exclude_special_tokens", "neuronpedia_id", "context_size", "seqpos_slice", "dataset_path",
    "sae_lens_version", "sae_lens_training_version", "hook_name_out", "hook_head_index_out",
])
# fmt: on
#: ``model_from_pretrained_kwargs`` entries that change a TransformerLens model's activations.
WEIGHT_PROCESSING = (
    "fold_ln",
    "center_writing_weights",
    "center_unembed",
    "fold_value_biases",
    "refactor_factored_attn_matrices",
)
