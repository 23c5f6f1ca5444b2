"""unipo: policy optimization for language models as compositions of parts."""
