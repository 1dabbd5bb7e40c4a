"""Glossary of the dimension names used in jaxtyping annotations.

=============  ==========================================================
name           meaning
=============  ==========================================================
batch          items in a batch
pos            token (or audio frame) positions
query_pos      positions that attend (queries)
key_pos        positions attended to (keys / values)
enc_pos        encoder positions, as the decoder's cross-attention sees them
head_index     attention heads
d_model        residual stream width
d_head         width of one head
d_mlp          MLP hidden width
d_vocab        vocabulary size
samples        raw audio samples
channels       conv channels in the audio front end
frames         audio frames after the conv front end (= pos in the encoder)
in_channels    input channels of one conv layer (out_channels: its output channels)
in_frames      input length of one conv layer (samples for the first, frames after)
kernel         taps of a convolution kernel
d_group        channels per group of a grouped convolution
new_samples    samples after resampling
group          codebooks of the wav2vec2 quantizer
d_code         width of a quantized (concatenated) codevector
d_proj         width of the wav2vec2 contrastive projections
layer          stacked layers / components (cache decompositions)
=============  ==========================================================
"""
