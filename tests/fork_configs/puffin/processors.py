image_size = 512
image_process = 'dynamic'