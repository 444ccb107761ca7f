"""What a dataset knows before it reads a picture: the sample index, its cache, the selection and
filters, captions, image sizes and stored prompt ids."""
