"""The instructions an image-to-text sample asks its caption with, one drawn per sample: Harmon's
``dense_prompts`` (for detailed captions) and ``short_prompts`` (``brief=True``). A model trained with
Harmon's data saw these, so they are kept as Harmon publishes them."""

dense_prompts = [
    "Describe the image in detail.",
    "Provide a comprehensive description of everything you see in the picture.",
    "Explain the scene depicted in the image as if you were describing it to someone who cannot see it.",
    "List all the objects and activities taking place in this image.",
    "What is the story being told by this image? Describe in detail.",
    "Imagine you are giving a detailed tour of the image's scene. How would you describe it?",
    "Describe the foreground, background, and any notable features of the image.",
    "How would you describe this image to build a replica of the scene?",
    "Write a paragraph detailing the setting, characters, and actions visible in this image.",
    "Describe every aspect of the image, including the environment, objects, and any people present.",
    "Provide a detailed analysis of the composition and elements of the image.",
    "What are the main focal points of this image? Describe them in detail.",
    "Catalog all visible elements in the image and describe their significance to the overall scene.",
]

short_prompts = [
    "Briefly describe the image",
    "Summarize the key elements of the image in one sentence.",
    "Give a concise description of the scene.",
    "Briefly, what is happening in this image?",
    "What is the most noticeable feature of this image?",
    "Summarize the image in a sentence.",
    "What activity is being depicted in the image?",
    "Describe the setting of the image in a few words.",
    "Caption this image for a social media post.",
]
