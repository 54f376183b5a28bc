import os
import tempfile

import pytest

# Keep the on-disk caches of a test run away from the user's home directory.
os.environ.setdefault("ENGRAMSIM_CACHE", os.path.join(tempfile.gettempdir(), "engramsim-test-cache"))


@pytest.fixture(scope="session")
def vocab():
    from engramsim.tokenizer import compressed_vocab

    return compressed_vocab()


@pytest.fixture(scope="session")
def tokenizer():
    from engramsim.tokenizer import load_tokenizer

    return load_tokenizer()
