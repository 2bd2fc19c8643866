"""Install: the places people use (HF cache, Ollama store, dsmirror folders); list and remove."""
