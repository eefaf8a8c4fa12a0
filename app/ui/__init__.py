"""The operator console (`/ui`) and the OHIF Viewer (`/viewer`), served by the archive itself.

Both are browser doors onto the same HTTP API as every other client: the console is plain HTML, CSS and small ES
modules (app/ui/static/) calling QIDO-RS, WADO-RS, STOW-RS and the operations APIs with the user's credential in
a header; OHIF is fetched once from the npm registry (viewer_install.py) and served as static files (viewer.py).
No asset comes from anywhere but the archive, so both work offline.
"""
