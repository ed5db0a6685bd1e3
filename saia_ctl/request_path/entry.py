"""Entry of the request path, run as ``python -I -S entry.py`` by cloud_interface.sh.

Puts the checkout on ``sys.path`` (``-I`` leaves it off) and runs
``saia_ctl.request_path.handler``, whose bytecode is cached, unlike this file's.
"""

import sys

if __name__ == "__main__":
    sys.path.insert(0, __file__.rsplit("/", 3)[0])
    from saia_ctl.request_path.handler import main

    main()
