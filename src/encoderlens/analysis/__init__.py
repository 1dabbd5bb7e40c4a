"""Analysis toolkit: patching, attribution, logit lens, head detectors, attention views."""
