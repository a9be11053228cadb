"""Score an image through a TF-Serving PredictionService, like the cloud service's Python client.

In one terminal serve a program (here the tiny classifier; normally a compiled ResNet-50):

    python -c "from tessera.host.tinyclassifier import tiny_classifier; tiny_classifier().save('tiny.tsp')"
    tessera serve tiny.tsp --port 8500 --model-name resnet50

and in another:

    python examples/client.py cat.jpg --port 8500 --model resnet50

Add --tls-ca CERT.pem when the server runs with --tls-cert/--tls-key.
"""

import argparse
import pathlib

from tessera.host import PredictionClient


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="+")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8500)
    ap.add_argument("--model", default="resnet50", help="model name the server was started with")
    ap.add_argument("--output", default=None, help="scores tensor to rank (default: the server's)")
    ap.add_argument("--tls-ca", default=None, help="PEM certificate to trust: connect with TLS")
    args = ap.parse_args()

    roots = pathlib.Path(args.tls_ca).read_bytes() if args.tls_ca else None
    client = PredictionClient(args.host, args.port, use_ssl=roots is not None, service_name=args.model,
                              root_certificates=roots)
    with client:
        for path in args.images:
            top5 = client.score_file(path, input_name="images", outputs=[args.output] if args.output else None)
            print(path)
            for label, p in top5:
                print(f"  {p:7.4f}  {label}")


if __name__ == "__main__":
    main()
