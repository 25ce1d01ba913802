"""GitPython for the corpus: an app that runs a program (git) on the current directory."""

import os

import git


def main():
    repo = git.Repo.init(os.getcwd())
    with repo.config_writer() as config:
        config.set_value("user", "name", "corpus")
        config.set_value("user", "email", "corpus@example.invalid")
    with open("notes.txt", "w") as f:
        f.write("sandboxed commit\n")
    repo.index.add(["notes.txt"])
    repo.index.commit("first commit")
    print("git", repo.git.version())
    print("log", repo.git.log("--format=%s"))
    print("files", repo.git.ls_files())
    return 0
