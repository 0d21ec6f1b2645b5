"""attrpreserve."""
