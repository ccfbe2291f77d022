"""Developer tools, apart from the course: the speed benchmark against TRL (``bench``), GPT-2-shaped stand-in models
(``gpt2_shape``), the notebooks' time budget (``notebook_times``), the browser check of the executed notebooks
(``browser``) and pointing the Colab links at a fork (``repo``). Nothing a student reads imports from here."""
