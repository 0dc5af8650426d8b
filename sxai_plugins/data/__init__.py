"""Step 0 of the pipeline, the inputs: images, COCO concept annotations, SLIC superpixels, bundled examples."""
