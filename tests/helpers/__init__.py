"""What the tests share: batches of features (``batches``), files in real on-disk formats
(``files``) and slow, obviously correct references for the kernels (``references``)."""
