"""`python -m deploy.image`: see deploy.image.build."""

from deploy.image.build import main

main()
